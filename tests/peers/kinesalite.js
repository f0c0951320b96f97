#!/usr/bin/env node
// Starts an in-memory kinesalite (Kinesis emulator) bound to 127.0.0.1 for the e2e tests.
//
// Usage: node kinesalite.js [PORT [HOST]]   (PORT 0 or absent = pick a free port;
//        HOST defaults to 127.0.0.1; the real-node tests use the node's bridge address)
// Prints the port actually listened on as a single line on stdout once it accepts
// connections; runs until killed. Stream state changes are instant (no CREATING delay).
'use strict';

const kinesalite = require('kinesalite');

const port = Number.parseInt(process.argv[2] || '0', 10);
const host = process.argv[3] || '127.0.0.1';
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`kinesalite.js: bad port ${JSON.stringify(process.argv[2])}`);
  process.exit(2);
}

const server = kinesalite({
  createStreamMs: 0,
  deleteStreamMs: 0,
  updateStreamMs: 0,
  // One emulator serves a whole test session, whose streams add up past AWS's default 100.
  shardLimit: 10000,
});

server.on('error', (err) => {
  console.error(`kinesalite.js: ${err.message}`);
  process.exit(1);
});

server.listen(port, host, () => {
  process.stdout.write(`${server.address().port}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
