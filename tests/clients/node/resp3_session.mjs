// node-redis through the proxy, driven by tests/resp3.rs.
// Usage: node resp3_session.mjs PROXY_PORT ADMIN_PORT allow|pinned
// allow:  a RESP3 client gets maps and Pub/Sub pushes, and keeps both across a handover it triggers.
// pinned: HELLO 3 is refused; node-redis does not fall back by itself (RESP: 3 fails to connect), RESP: 2 works.
// Prints "ok" when every check holds.
import { createClient } from 'redis';
import assert from 'node:assert/strict';

const [port, admin, mode] = process.argv.slice(2);
const url = `redis://127.0.0.1:${port}`;

async function handover() {
  await fetch(`http://127.0.0.1:${admin}/handover`, { method: 'POST', body: '{}' });
  for (let i = 0; i < 600; i++) {
    const status = await (await fetch(`http://127.0.0.1:${admin}/status`)).json();
    if (status.handover === null && status.last_handover !== null) {
      assert.equal(status.last_handover.outcome, 'switched');
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('handover did not finish');
}

if (mode === 'allow') {
  const client = createClient({ url, RESP: 3 });
  await client.connect();
  await client.hSet('node:h', { a: '1' });
  assert.deepEqual({ ...(await client.hGetAll('node:h')) }, { a: '1' });
  const subscriber = client.duplicate();
  await subscriber.connect();
  const messages = [];
  await subscriber.subscribe('node:events', (message) => messages.push(message));
  assert.equal(await client.publish('node:events', 'before'), 1);

  await handover();

  assert.equal(await client.publish('node:events', 'after'), 1);
  for (let i = 0; i < 100 && messages.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(messages, ['before', 'after']);
  const hello = await client.sendCommand(['HELLO']);
  assert.equal(hello.proto, 3);
  assert.equal(hello.version, '7.0.15');
  assert.deepEqual({ ...(await client.hGetAll('node:h')) }, { a: '1' });
  await subscriber.quit();
  await client.quit();
} else {
  const refused = createClient({ url, RESP: 3, socket: { reconnectStrategy: false } });
  let error = null;
  refused.on('error', (e) => { error = e; });
  await refused.connect().catch((e) => { error = e; });
  assert.ok(error && /unknown command `HELLO`/.test(error.message), `HELLO 3 should be refused, got ${error}`);
  const client = createClient({ url, RESP: 2 });
  await client.connect();
  await client.hSet('node:h', { a: '1' });
  assert.deepEqual({ ...(await client.hGetAll('node:h')) }, { a: '1' });
  await client.quit();
}
console.log('ok');
