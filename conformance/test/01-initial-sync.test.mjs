import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Shape } from '@electric-sql/client'
import { withEnv } from '../lib/harness.mjs'
import { openStream, withTimeout, assertRowsMatchTable, expectedRows, diffRows, tableColumns } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const ROWS = 10_000

test('a 10,000-row table syncs through several chunks and the client rows equal SELECT *', { timeout: 180_000 }, async (t) => {
  await withEnv({
    chunkBytes: 100_000,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, ROWS))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl)
    const shape = new Shape(h.stream) // the client's own materialised view, next to our strict mirror
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 60_000, 'the first up-to-date', h.diag)
      const rows = await withTimeout(shape.rows, 10_000, 'Shape.rows to resolve')

      // the rows, as the client parsed them, equal SELECT * parsed by the documented rules
      assert.equal(h.mirror.violations.length, 0, `log violations: ${h.mirror.violations.slice(0, 5).join('; ')}`)
      assert.equal(h.mirror.mustRefetch, 0, 'no must-refetch during an initial sync')
      assert.equal(h.mirror.rows.size, ROWS)
      await assertRowsMatchTable(sql, h.mirror.rows, 'strict mirror after initial sync')
      const shapeMap = new Map(shape.currentValue)
      assert.equal(rows.length, ROWS, 'Shape.rows length')
      const diffs = diffRows(shapeMap, await expectedRows(sql))
      assert.deepEqual(diffs, [], `Shape.currentValue differs from SELECT *:\n${diffs.join('\n')}`)

      // spot-check the parsed JS types the client hands out
      const one = h.mirror.rows.get('"public"."items"/"2"')
      assert.ok(one, 'row id=2 present under key "public"."items"/"2"')
      assert.equal(typeof one.id, 'number')
      assert.equal(typeof one.n, 'bigint')
      assert.equal(one.n, 2000000014n)
      assert.equal(one.done, true)
      assert.equal(typeof one.title, 'string')
      assert.deepEqual(one.tags, ['t2', 'x,y', null])
      assert.equal(h.mirror.rows.get('"public"."items"/"11"').n, null)

      // requests: the first one is offset=-1 and answers electric-offset 0_0; the sync is chunked
      const first = h.log[0]
      assert.equal(first.offset, '-1', `first request URL: ${first.url}`)
      assert.equal(first.status, 200, `first response status (${first.url})`)
      assert.equal(first.headers['electric-offset'], '0_0', 'first response electric-offset')
      assert.ok(first.headers['electric-handle'], 'first response has electric-handle')
      assert.equal(first.headers['electric-up-to-date'], undefined, 'offset=-1 is never up-to-date')
      const schema = JSON.parse(first.headers['electric-schema'])
      const cols = await tableColumns(sql, 'items')
      for (const c of cols) {
        assert.equal(schema[c.name]?.type, c.type, `electric-schema type of ${c.name}`)
      }
      assert.equal(schema.id.pk_index, 0)
      assert.equal(schema.id.not_null, true)
      assert.equal(schema.tags.dims, 1)

      // chunked: more than one non-live request returned snapshot rows (electric-offset 0_<i>);
      // an unchunked sync also makes two non-live requests (offset=-1 → 0_0, then 0_0 → 0_inf)
      const nonLive = h.log.filter((e) => !e.live && e.status === 200)
      const snapshotOffsets = nonLive.map((e) => e.headers['electric-offset']).filter((o) => /^0_\d+$/.test(o))
      assert.ok(snapshotOffsets.length > 1,
        `expected several non-live requests returning snapshot chunks 0_<i>, got ${snapshotOffsets.join(',')}`)
      assert.ok(nonLive.length > snapshotOffsets.length, 'a non-live request past the snapshot ends the initial sync')
      const distinct = new Set(snapshotOffsets)
      for (let i = 0; i < distinct.size; i++) assert.ok(distinct.has(`0_${i}`), `snapshot chunk offset 0_${i} present`)
      t.diagnostic(`${nonLive.length} non-live requests, snapshot chunks ${distinct.size}, ${h.log.length} requests in all`)
      const handles = new Set(h.log.filter((e) => e.status === 200).map((e) => e.headers['electric-handle']))
      assert.equal(handles.size, 1, `one handle for the whole sync, got ${[...handles].join(',')}`)
      assert.ok(!h.log.some((e) => e.status === 409), 'no 409 during the initial sync')
      assert.ok(!h.log.some((e) => e.status === 204), 'no 204 responses')
    } finally {
      h.close()
    }
  })
})

test('an empty table syncs to up-to-date with no rows', { timeout: 60_000 }, async () => {
  await withEnv({
    chunkBytes: 100_000,
    setup: async (sql) => { await sql.query(ITEMS_DDL) },
  }, async ({ ampere }) => {
    const h = openStream(ampere.shapeUrl)
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'up-to-date on an empty table', h.diag)
      assert.equal(h.mirror.rows.size, 0)
      assert.equal(h.log[0].headers['electric-offset'], '0_0')
      assert.equal(h.log[0].headers['electric-up-to-date'], undefined, 'offset=-1 is never up-to-date')
      assert.equal(h.mirror.errors.length, 0)
    } finally {
      h.close()
    }
  })
})
