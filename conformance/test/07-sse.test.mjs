// Live mode over server-sent events (`liveSse: true`, protocol.md §6.5) with the official client:
// live changes stream in, streams that end (AMPERE_SSE_TIMEOUT, shortened here from 60 s) and a
// restart of ampere are resumed with no loss and no duplicate.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { withEnv } from '../lib/harness.mjs'
import { openStream, assertRowsMatchTable, waitRowsMatchTable } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const key = (id) => `"public"."items"/"${id}"`
const STREAM_SECS = 3

const isSse = (e) => e.url.includes('live_sse=true')

test('liveSse streams inserts, updates and deletes, and resumes after ended streams and a restart with no loss or duplicate', { timeout: 150_000 }, async (t) => {
  await withEnv({
    chunkBytes: 20_000,
    longPollMs: 5000,
    extraEnv: { AMPERE_SSE_TIMEOUT: `${STREAM_SECS}s` },
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 300))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl, 'items', { liveSse: true })
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      await assertRowsMatchTable(sql, h.mirror.rows, 'after initial sync')
      await sleep(300) // the client opens its first event stream

      await sql.query(`INSERT INTO items (id, title) VALUES (1001, 'over sse')`)
      await h.mirror.waitUntil(() => h.mirror.rows.get(key(1001))?.title === 'over sse', 5000, 'the insert', h.diag)
      await sql.query(`UPDATE items SET title = 'updated over sse', n = NULL WHERE id = 1001`)
      await h.mirror.waitUntil(() => h.mirror.rows.get(key(1001))?.title === 'updated over sse', 5000, 'the update', h.diag)
      await sql.query(`BEGIN;
        INSERT INTO items (id, title) VALUES (2001, 'tx a'), (2002, 'tx b');
        UPDATE items SET title = 'tx c' WHERE id = 7;
        DELETE FROM items WHERE id = 8;
        UPDATE items SET id = 3001 WHERE id = 9;
        COMMIT;`)
      await h.mirror.waitUntil(() => h.mirror.rows.has(key(3001)) && !h.mirror.rows.has(key(8)), 5000, 'the transaction', h.diag)
      await sql.query(`DELETE FROM items WHERE id = 1001`)
      await h.mirror.waitUntil(() => !h.mirror.rows.has(key(1001)), 5000, 'the delete', h.diag)
      await assertRowsMatchTable(sql, h.mirror.rows, 'after live changes')

      // Streams end every few seconds; writes keep arriving across the reconnects.
      for (let i = 0; i < 4 * STREAM_SECS; i++) {
        await sql.query(`INSERT INTO items (id, title) VALUES (${5000 + i}, 'across reconnects ${i}')`)
        await sql.query(`UPDATE items SET n = ${i} WHERE id = ${10 + i}`)
        await sleep(500)
      }
      await waitRowsMatchTable(sql, h, 10_000, 'the writes across stream ends')

      const sse = h.log.filter(isSse)
      assert.ok(sse.length >= 3, `the client streamed over SSE and reconnected (${sse.length} SSE requests)\n${h.diag()}`)
      for (const e of sse.filter((x) => x.status === 200)) {
        assert.equal(e.headers['content-type'], 'text/event-stream')
        assert.equal(e.headers['cache-control'], 'public, max-age=59')
        assert.ok(e.headers['electric-cursor'], 'SSE responses carry electric-cursor')
        assert.ok(e.headers['electric-handle'] && e.headers['electric-offset'])
      }

      // A restart: the stream breaks, writes happen while ampere is down, the client resumes.
      await ampere.stop('SIGTERM')
      await sql.query(itemsInsertRange(20000, 20499)) // spans several chunks
      await sql.query(`UPDATE items SET title = 'edited while down' WHERE id BETWEEN 1 AND 20`)
      await ampere.start()
      await waitRowsMatchTable(sql, h, 30_000, 'the writes made while ampere was down')
      await sql.query(`INSERT INTO items (id, title) VALUES (30001, 'after restart')`)
      await h.mirror.waitUntil(() => h.mirror.rows.has(key(30001)), 5000, 'a live insert after the restart', h.diag)
      await assertRowsMatchTable(sql, h.mirror.rows, 'after the restart')

      assert.deepEqual(h.mirror.violations, [], 'no duplicate inserts, no changes for absent rows')
      assert.equal(h.mirror.mustRefetch, 0, 'no must-refetch')
      assert.equal(h.mirror.errors.length, 0, 'no client errors')
      assert.ok(h.log.slice(-3).some(isSse), `the client still uses SSE after the restart\n${h.diag()}`)
      t.diagnostic(`${h.log.filter(isSse).length} SSE requests of ${h.log.length}`)
      const live = h.log.filter((e) => e.live)
      assert.ok(live.every(isSse), `every live request used SSE (no fall back to long polling)\n${h.diag()}`)
    } finally {
      h.close()
    }
  })
})
