// A net server with allowHalfOpen that ignores 'end': every connection stays half-open.
const net = require('net');
const held = [];
const server = net.createServer({ allowHalfOpen: true }, (sock) => { // closewait-test: open
  held.push(sock);
  sock.on('data', () => {}); // closewait-test: eof
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
