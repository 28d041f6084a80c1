// The instruction count of BENCHMARKS.md section 11: N connections, client and server in this process.
const net = require('net');
const n = Number(process.argv[2]);
const server = net.createServer((sock) => {
  let seen = '';
  sock.on('data', (d) => { seen += d; if (seen.includes('\n\n')) sock.end('x'.repeat(512)); });
  sock.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  let left = n;
  const one = () => {
    if (left-- === 0) { server.close(); return; }
    const c = net.connect(port, '127.0.0.1', () => c.write('GET\n\n'));
    c.on('data', () => {});
    c.on('end', () => { c.end(); });
    c.on('close', one);
  };
  one();
});
