import { test } from 'node:test'
import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { withEnv } from '../lib/harness.mjs'
import { openStream, assertRowsMatchTable, waitRowsMatchTable } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const LATENCY_LIMIT_MS = Number(process.env.CONFORMANCE_LATENCY_LIMIT_MS ?? 1000)
const LONG_POLL_MS = 3000
const key = (id) => `"public"."items"/"${id}"`

/**
 * Runs `statement` (autocommit) and returns the time from just before it was sent (so the
 * commit is included) to the subscriber callback after which `cond` held.
 */
async function timeChange(sql, h, statement, cond, label) {
  const t0 = performance.now()
  const arrived = h.mirror.waitUntil(cond, 15_000, label, h.diag)
  arrived.catch(() => {}) // handled below
  await sql.query(statement)
  const committed = performance.now()
  const t1 = await arrived
  return { fromSend: t1 - t0, fromCommit: Math.max(0, t1 - committed) }
}

test('live inserts, updates and deletes each reach the subscriber within 1 s and the rows equal SELECT *', { timeout: 120_000 }, async (t) => {
  await withEnv({
    chunkBytes: 100_000,
    longPollMs: LONG_POLL_MS,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 200))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl)
    const latencies = {}
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      await assertRowsMatchTable(sql, h.mirror.rows, 'after initial sync')
      // let the client open its first live long-poll
      await sleep(200)

      // insert
      latencies.insert = await timeChange(sql, h,
        `INSERT INTO items (id, title, n, done, score, created_at, tags)
         VALUES (1001, 'new row', 9007199254740993, true, 0.1, '2024-05-06 07:08:09.123456+02', '{a,"b c"}')`,
        () => h.mirror.rows.get(key(1001))?.title === 'new row', 'the insert')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after insert')
      assert.equal(h.mirror.rows.get(key(1001)).n, 9007199254740993n, 'int8 beyond 2^53 arrives exactly')

      // update (some columns)
      latencies.update = await timeChange(sql, h,
        `UPDATE items SET title = 'updated row', n = NULL, tags = '{}' WHERE id = 1001`,
        () => h.mirror.rows.get(key(1001))?.title === 'updated row', 'the update')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after update')

      // update of a snapshot row
      latencies.updateSnapshotRow = await timeChange(sql, h,
        `UPDATE items SET done = NOT coalesce(done, false), score = -1.5 WHERE id = 42`,
        () => h.mirror.rows.get(key(42))?.score === -1.5, 'the update of snapshot row 42')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after update of a snapshot row')

      // delete
      latencies.delete = await timeChange(sql, h,
        `DELETE FROM items WHERE id = 1001`,
        () => !h.mirror.rows.has(key(1001)), 'the delete')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after delete')

      // a multi-statement transaction arrives whole
      latencies.transaction = await timeChange(sql, h,
        `BEGIN;
         INSERT INTO items (id, title) VALUES (2001, 'tx a'), (2002, 'tx b');
         UPDATE items SET title = 'tx c' WHERE id = 7;
         DELETE FROM items WHERE id = 8;
         COMMIT;`,
        () => h.mirror.rows.has(key(2002)) && h.mirror.rows.get(key(7))?.title === 'tx c' && !h.mirror.rows.has(key(8)),
        'the transaction')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after a transaction')

      // primary-key change: delete of the old key + insert of the new key
      latencies.pkChange = await timeChange(sql, h,
        `UPDATE items SET id = 3001 WHERE id = 9`,
        () => h.mirror.rows.has(key(3001)) && !h.mirror.rows.has(key(9)), 'the primary-key change')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after a primary-key change')

      // after an idle long-poll timeout (200 up-to-date, not 204) an insert still arrives in time
      await sleep(LONG_POLL_MS + 1500)
      latencies.afterIdle = await timeChange(sql, h,
        `INSERT INTO items (id, title) VALUES (4001, 'after idle')`,
        () => h.mirror.rows.has(key(4001)), 'the insert after an idle long-poll')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after idle insert')

      t.diagnostic(`latency ms (send→callback / commit→callback): ${JSON.stringify(
        Object.fromEntries(Object.entries(latencies).map(([k, v]) => [k, `${v.fromSend.toFixed(1)}/${v.fromCommit.toFixed(1)}`])))}`)
      for (const [step, v] of Object.entries(latencies)) {
        assert.ok(v.fromCommit <= LATENCY_LIMIT_MS,
          `${step}: arrived ${v.fromCommit.toFixed(0)} ms after commit (limit ${LATENCY_LIMIT_MS} ms)`)
      }

      // a burst of 50 transactions converges
      for (let i = 0; i < 50; i++) {
        await sql.query(`INSERT INTO items (id, title) VALUES (${5000 + i}, 'burst ${i}')`)
      }
      await sql.query(`UPDATE items SET n = id WHERE id BETWEEN 5000 AND 5049`)
      await waitRowsMatchTable(sql, h, 10_000, 'the burst to converge')

      assert.deepEqual(h.mirror.violations, [])
      assert.equal(h.mirror.mustRefetch, 0)
      assert.equal(h.mirror.errors.length, 0)
      const live = h.log.filter((e) => e.live)
      assert.ok(live.length > 0, 'the client made live requests')
      assert.ok(!h.log.some((e) => e.status === 204 || e.status === 409), 'no 204 or 409')
      const idle = live.filter((e) => e.status === 200 && e.headers['electric-has-data'] === 'false')
      assert.ok(idle.length >= 1, 'an idle long-poll ended with 200 and electric-has-data: false')
      for (const e of live.filter((x) => x.status === 200)) {
        assert.ok(e.headers['electric-cursor'], 'live responses carry electric-cursor')
        assert.equal(e.headers['electric-schema'], undefined, 'live responses carry no electric-schema')
      }
    } finally {
      h.close()
    }
  })
})
