// node-hello: the microcontainer example app. Node's own http module only (no npm).
//
// GET /        -> "hello from HOSTNAME (pid N)\n"
// SIGHUP       -> logs "node-hello: SIGHUP received" (proves `docker kill -s HUP` reaches the app through PID 1)
// SIGTERM      -> asks its Consul agent whether the service is still listed (microinit deregisters BEFORE it
//                 forwards SIGTERM, so the answer should be "gone"), logs it, closes the server, exits 0.
'use strict';
const http = require('http');
const os = require('os');

const port = Number(process.env.PORT || 8080);
const service = process.env.MICROINIT_SERVICE_NAME || '';
// Consul's own convention, as microinit reads it: host:port or http://host:port (the demo never uses https).
const consul = (process.env.CONSUL_HTTP_ADDR || '').replace(/^http:\/\//, '').replace(/\/+$/, '');

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`hello from ${os.hostname()} (pid ${process.pid})\n`);
});
server.listen(port, () => console.log(`node-hello: listening on :${port} as pid ${process.pid}`));

process.on('SIGHUP', () => console.log('node-hello: SIGHUP received'));

// How many instances of our service the local agent still lists ("?" when it cannot be asked).
function instancesInConsul(done) {
  if (!service || !consul) return done('?');
  const req = http.get(`http://${consul}/v1/agent/services`, { timeout: 1000 }, (res) => {
    let body = '';
    res.on('data', (c) => { body += c; });
    res.on('end', () => {
      try {
        done(String(Object.values(JSON.parse(body)).filter((s) => s.Service === service).length));
      } catch (e) {
        done('?');
      }
    });
  });
  req.on('timeout', () => req.destroy());
  req.on('error', () => done('?'));
}

process.on('SIGTERM', () => {
  instancesInConsul((n) => {
    const verdict = n === '0' ? 'gone' : n === '?' ? 'unknown' : 'still registered';
    console.log(`node-hello: SIGTERM received; consul instances of "${service}": ${n} (${verdict})`);
    server.close();
    process.exit(0);
  });
});
