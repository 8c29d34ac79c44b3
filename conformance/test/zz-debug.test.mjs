import { test, after } from 'node:test'
after(() => setTimeout(() => { console.log('resources', JSON.stringify(process.getActiveResourcesInfo())) }, 1000).unref())
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { withEnv } from '../lib/harness.mjs'
import { openStream, assertRowsMatchTable, waitRowsMatchTable } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const key = (id) => `"public"."items"/"${id}"`

test('TRUNCATE makes the live client get a 409 must-refetch and re-converge to the table rows', { timeout: 120_000 }, async () => {
  await withEnv({
    chunkBytes: 100_000,
    longPollMs: 5000,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 300))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl)
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      await assertRowsMatchTable(sql, h.mirror.rows, 'after initial sync')
      await sleep(200)
      await sql.query(`INSERT INTO items (id, title) VALUES (1001, 'before truncate')`)
      await h.mirror.waitUntil(() => h.mirror.rows.has(key(1001)), 5000, 'a live insert before the truncate', h.diag)
      const oldHandle = h.stream.shapeHandle

      await sql.query('TRUNCATE items')
      await sql.query(`INSERT INTO items (id, title, n) VALUES (1, 'after truncate 1', 1), (2, 'after truncate 2', 2)`)
      await h.mirror.waitUntil(() => h.mirror.mustRefetch > 0, 20_000, 'must-refetch after TRUNCATE', h.diag)
      await waitRowsMatchTable(sql, h, 20_000, 'the rows inserted right after the truncate')

      // more rows once the client is on the new shape, live again
      await sql.query(itemsInsertRange(500, 520))
      await sql.query(`UPDATE items SET title = 'updated after refetch' WHERE id = 2`)
      await waitRowsMatchTable(sql, h, 10_000, 'the rows inserted after the refetch')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after truncate and re-sync')
      assert.equal(h.mirror.rows.size, 23)

      assert.ok(h.log.some((e) => e.status === 409), `a 409 was seen: ${h.diag()}`)
      const conflict = h.log.find((e) => e.status === 409)
      assert.ok(conflict.headers['electric-handle'] === undefined || conflict.headers['electric-handle'] !== oldHandle,
        'a 409 never points back to the handle the client sent')
      const newHandle = h.stream.shapeHandle
      assert.ok(newHandle && newHandle !== oldHandle, `a new handle after the truncate (old ${oldHandle}, new ${newHandle})`)
      const restart = h.log.find((e) => h.log.indexOf(e) > h.log.indexOf(conflict) && e.status === 200)
      assert.equal(restart.offset, '-1', 'the client restarted at offset=-1')
      assert.equal(restart.headers['electric-handle'], newHandle)
      assert.deepEqual(h.mirror.violations, [])
      assert.equal(h.mirror.errors.length, 0)
    } finally {
      h.close()
    }
  })
})
