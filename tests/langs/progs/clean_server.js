// The same server, ending each connection when the client does.
const net = require('net');
const server = net.createServer({ allowHalfOpen: true }, (sock) => {
  sock.on('data', () => {});
  sock.on('end', () => sock.end());
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
