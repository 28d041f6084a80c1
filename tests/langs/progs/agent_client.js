// An http.Agent keep-alive pool against a server that closes idle connections: the agent drops
// a pooled socket when its server closes it (no leak to report).
const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
const port = Number(process.argv[2]);

function fetch(path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      res.resume();
      res.on('end', resolve);
    }).on('error', reject);
  });
}

(async () => {
  for (let i = 0; i < 3; i++) await fetch('/' + i);
  console.log('fetched');
  setTimeout(() => {}, 60000);
})();
