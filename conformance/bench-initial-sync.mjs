// Benchmark (not a test): initial sync of a 100,000-row table with the official client against
// ampere, next to `COPY items TO STDOUT` of the same table through psql, in the same run.
// Prints one JSON line. Default chunk threshold (10 MiB) unless BENCH_CHUNK_BYTES is set.
//
//   node conformance/bench-initial-sync.mjs            # BENCH_ROWS=100000 by default
//
// Env: AMPERE_BIN, PG_BIN, BENCH_ROWS, BENCH_CHUNK_BYTES.

import { spawn } from 'node:child_process'
import { performance } from 'node:perf_hooks'
import { Shape } from '@electric-sql/client'
import { withEnv } from './lib/harness.mjs'
import { openStream, expectedRows, diffRows } from './lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from './lib/tables.mjs'

const ROWS = Number(process.env.BENCH_ROWS ?? 100_000)
const CHUNK = process.env.BENCH_CHUNK_BYTES ? Number(process.env.BENCH_CHUNK_BYTES) : undefined

function psqlCopy(url) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    let bytes = 0
    const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', url, '-c', 'COPY items TO STDOUT'],
      { stdio: ['ignore', 'pipe', 'inherit'] })
    child.stdout.on('data', (b) => { bytes += b.length }) // read and dropped, like > /dev/null
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
    child.on('error', reject)
    child.on('exit', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve({ ms: performance.now() - t0, bytes })
      else reject(new Error(`psql COPY exited ${code}`))
    })
  })
}

async function clientSync(shapeUrl) {
  const t0 = performance.now()
  const h = openStream(shapeUrl)
  const shape = new Shape(h.stream)
  try {
    await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 300_000, 'up-to-date', h.diag)
    const ms = performance.now() - t0
    const requests = h.log.filter((e) => !e.live).length
    return { ms, requests, rows: shape.currentRows.length, mirror: h.mirror, handle: h.stream.shapeHandle }
  } finally {
    h.close()
  }
}

try {
await withEnv({
  chunkBytes: CHUNK,
  longPollMs: 20_000,
  setup: async (sql) => {
    await sql.query(ITEMS_DDL)
    await sql.query(itemsInsertRange(1, ROWS))
    await sql.query('VACUUM ANALYZE items')
  },
}, async ({ sql, ampere, pg }) => {
  const copyWarmup = await psqlCopy(pg.url) // warm the page cache for both sides
  const cold = await clientSync(ampere.shapeUrl) // creates the shape: snapshot + serving
  const warm = await clientSync(ampere.shapeUrl) // the same shape, served from ampere's storage
  const copy = await psqlCopy(pg.url)
  const diffs = diffRows(cold.mirror.rows, await expectedRows(sql), 3)
  if (diffs.length || cold.rows !== ROWS) {
    throw new Error(`benchmark sync is wrong (${cold.rows} rows):\n${diffs.join('\n')}`)
  }
  console.log(JSON.stringify({
    bench: 'initial-sync',
    rows: ROWS,
    chunk_bytes: CHUNK ?? 'default',
    ampere_client_sync_ms: Math.round(cold.ms),
    ampere_client_requests: cold.requests,
    ampere_client_warm_sync_ms: Math.round(warm.ms),
    psql_copy_ms: Math.round(copy.ms),
    psql_copy_bytes: copy.bytes,
    psql_copy_warmup_ms: Math.round(copyWarmup.ms),
    ratio_sync_to_copy: Number((cold.ms / copy.ms).toFixed(2)),
    ratio_warm_sync_to_copy: Number((warm.ms / copy.ms).toFixed(2)),
  }))
})
} catch (e) {
  console.error(e)
  process.exit(1)
}
// the client leaves a throttling timer of up to 60 s behind; everything of ours is stopped
process.exit(0)
