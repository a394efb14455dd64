// A cluster-aware application for tests/cluster.rs: ioredis's Cluster started at the proxy's listen port.
//
// Usage: node cluster_client.mjs SEED_PORT KEYS
// Writes and reads KEYS keys spread over every slot, then a transaction on one slot (hash tags), Pub/Sub and a
// blocking call; prints one JSON line with what it saw, every address it learned included.
import Redis from "ioredis";

const [seed, count] = process.argv.slice(2).map(Number);
const startup = [{ host: "127.0.0.1", port: seed }];
const seen = {};
const cluster = new Redis.Cluster(startup);
const subscriber = new Redis.Cluster(startup);
try {
  for (let i = 0; i < count; i++) await cluster.set(`io:${i}`, `${i}`);
  let readBack = 0;
  for (let i = 0; i < count; i++) if ((await cluster.get(`io:${i}`)) === `${i}`) readBack++;
  seen.read_back = readBack;

  const results = await cluster.multi().incr("{order:9}:n").rpush("{order:9}:items", "x").exec();
  seen.multi = results.map(([error, value]) => (error ? `error: ${error.message}` : value));

  await subscriber.subscribe("alerts");
  const message = new Promise((resolve) => subscriber.on("message", (_channel, text) => resolve(text)));
  seen.published_to = await cluster.publish("alerts", "fire");
  seen.pubsub = await Promise.race([message, new Promise((r) => setTimeout(() => r(null), 10000))]);

  await cluster.rpush("tasks", "task-1");
  seen.blpop = await cluster.blpop("tasks", 2);

  const learned = new Set();
  for (const client of [cluster, subscriber]) {
    for (const node of client.nodes("all")) learned.add(`${node.options.host}:${node.options.port}`);
  }
  seen.learned = [...learned].sort();
  console.log(JSON.stringify(seen));
} finally {
  cluster.disconnect();
  subscriber.disconnect();
}
