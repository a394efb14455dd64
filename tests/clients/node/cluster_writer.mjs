// A cluster-aware writer for tests/cluster.rs: ioredis's Cluster started at the proxy's listen port, INCRing keys
// spread over every slot until STOP_FILE exists.
//
// Usage: node cluster_writer.mjs SEED_PORT STOP_FILE
// Prints "writing" once its first write is acknowledged, then at the end one JSON line: the INCRs acknowledged per
// key, the errors, the redirections (MOVED or ASK) and the CLUSTERDOWN or TRYAGAIN replies it received, its
// longest write and every address it learned.
import { existsSync } from "node:fs";
import Redis from "ioredis";

const [seed, stop] = [Number(process.argv[2]), process.argv[3]];

// ioredis follows MOVED and ASK replies and retries CLUSTERDOWN and TRYAGAIN on its own, in Cluster.handleError,
// without the application seeing them: counted here.
let redirections = 0;
let retried = 0;
const handleError = Redis.Cluster.prototype.handleError;
Redis.Cluster.prototype.handleError = function (error, ttl, handlers) {
  const kind = error.message.split(" ")[0];
  if (kind === "MOVED" || kind === "ASK") redirections++;
  if (kind === "CLUSTERDOWN" || kind === "TRYAGAIN") retried++;
  return handleError.call(this, error, ttl, handlers);
};

const cluster = new Redis.Cluster([{ host: "127.0.0.1", port: seed }]);
const keys = Array.from({ length: 64 }, (_, i) => `iow:${i}`);
const acked = Object.fromEntries(keys.map((key) => [key, 0]));
const errors = [];
let longest = 0;
for (let i = 0; !existsSync(stop); i++) {
  const key = keys[i % keys.length];
  const started = performance.now();
  try {
    await cluster.incr(key);
    acked[key]++;
  } catch (error) {
    // An INCR whose outcome the client cannot know.
    errors.push(String(error));
  }
  longest = Math.max(longest, performance.now() - started);
  if (i === 0) console.log("writing");
}
const learned = [...new Set(cluster.nodes("all").map((n) => `${n.options.host}:${n.options.port}`))].sort();
console.log(
  JSON.stringify({
    acked,
    errors: errors.length,
    first_errors: errors.slice(0, 3),
    redirections,
    retried,
    longest_ms: longest,
    learned,
  }),
);
cluster.disconnect();
