// make bench, part "langs": an HTTP server answering one request per connection, then closing.
// Writes its port to the file named by process.argv[2].
const net = require('net');
const fs = require('fs');
const RESPONSE = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 512\r\nConnection: close\r\n\r\n' + 'x'.repeat(512));
const server = net.createServer((sock) => {
  let seen = '';
  sock.on('data', (d) => {
    seen += d.toString('latin1');
    if (seen.includes('\r\n\r\n')) sock.end(RESPONSE);
  });
  sock.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(process.argv[2] + '.tmp', String(server.address().port));
  fs.renameSync(process.argv[2] + '.tmp', process.argv[2]);
});
