// node-hello: the microcontainer example app. Node's own http module only (no npm).
//
// GET /        -> "hello from HOSTNAME (pid N)\n"
// SIGHUP       -> logs "node-hello: SIGHUP received" (proves `docker kill -s HUP` reaches the app through PID 1)
// SIGTERM      -> asks its Consul agent whether THIS instance is still listed, by its service ID (microinit
//                 deregisters BEFORE it forwards SIGTERM, so the answer should be "gone"), logs it, closes the
//                 server, exits 0. By ID, not by name: every replica shares the name, so a count by name
//                 would call this instance registered while a sibling on the same host still is.
'use strict';
const http = require('http');
const os = require('os');

const port = Number(process.env.PORT || 8080);
const service = process.env.MICROINIT_SERVICE_NAME || '';
// The ID microinit registered this instance under (it exports it to the app, default or given).
const serviceId = process.env.MICROINIT_SERVICE_ID || '';
// Consul's own convention, as microinit reads it: host:port or http://host:port (the demo never uses https).
const consul = (process.env.CONSUL_HTTP_ADDR || '').replace(/^http:\/\//, '').replace(/\/+$/, '');

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`hello from ${os.hostname()} (pid ${process.pid})\n`);
});
server.listen(port, () => console.log(`node-hello: listening on :${port} as pid ${process.pid}`));

process.on('SIGHUP', () => console.log('node-hello: SIGHUP received'));

// Whether the local agent still lists this instance: 'yes', 'no', or '?' when it cannot be asked.
function listedInConsul(done) {
  if (!serviceId || !consul) return done('?');
  const req = http.get(`http://${consul}/v1/agent/service/${encodeURIComponent(serviceId)}`, { timeout: 1000 }, (res) => {
    res.resume();
    res.on('end', () => done(res.statusCode === 200 ? 'yes' : res.statusCode === 404 ? 'no' : '?'));
  });
  req.on('timeout', () => req.destroy());
  req.on('error', () => done('?'));
}

process.on('SIGTERM', () => {
  listedInConsul((listed) => {
    const verdict = listed === 'no' ? 'gone' : listed === '?' ? 'unknown' : 'still registered';
    console.log(`node-hello: SIGTERM received; consul instance "${serviceId}" of "${service}": ${verdict}`);
    server.close();
    process.exit(0);
  });
});
