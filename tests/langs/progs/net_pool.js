// A pool of net connections made with allowHalfOpen that keeps them after the server's FIN.
const net = require('net');
const port = Number(process.argv[2]);
const pool = [];

function dial() {
  const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }); // closewait-test: open
  c.on('data', () => {}); // closewait-test: eof
  c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  pool.push(c);
}

dial();
dial();
console.log('dialled');
setTimeout(() => {}, 60000);
