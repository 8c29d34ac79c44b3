import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { withEnv } from '../lib/harness.mjs'
import { openStream, assertRowsMatchTable, waitRowsMatchTable, tableColumns, expectedRows, diffRows } from '../lib/client.mjs'
import { DDL, COLUMNS, VARIANT_IDS, insertRow, updateRow } from '../lib/value-types.mjs'

const key = (id) => `"public"."items"/"${id}"`

test('every column type arrives as the client parse of Postgres text output, from the snapshot and from replication', { timeout: 120_000 }, async (t) => {
  await withEnv({
    chunkBytes: 100_000,
    longPollMs: 5000,
    setup: async (sql) => {
      for (const s of DDL) await sql.query(s)
      for (const [variant, id] of Object.entries(VARIANT_IDS)) await insertRow(sql, id, variant)
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl)
    try {
      // snapshot path
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      await assertRowsMatchTable(sql, h.mirror.rows, 'snapshot rows')

      // electric-schema describes each column as the catalog does (protocol.md 4.2)
      const first = h.log.find((e) => e.status === 200 && !e.live)
      const schema = JSON.parse(first.headers['electric-schema'])
      const cols = await tableColumns(sql, 'items')
      assert.deepEqual(Object.keys(schema).sort(), cols.map((c) => c.name).sort(), 'schema has every column')
      for (const c of cols) {
        const s = schema[c.name]
        assert.equal(s.type, c.type, `${c.name}: type`)
        assert.equal(s.dims, c.dims > 0 ? c.dims : undefined, `${c.name}: dims`)
        assert.equal(s.not_null, c.notNull ? true : undefined, `${c.name}: not_null`)
        assert.equal(s.pk_index, c.pkIndex, `${c.name}: pk_index`)
      }
      assert.equal(schema.c_text_2d.dims, 2)
      assert.equal(schema.c_enum.type, 'mood')

      // explicit spot checks of the parsed JS values
      const typical = h.mirror.rows.get(key(1))
      assert.equal(typical.c_bpchar, 'ab   ', 'bpchar keeps its padding')
      assert.equal(typical.c_uuid, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')
      assert.equal(typical.c_bytea, '\\x0001ff')
      assert.equal(typical.c_int8, 1234567890123n)
      assert.equal(typical.c_bool, true)
      assert.deepEqual(typical.c_text_2d, [['a', 'b c'], ['d"e', null]])
      assert.deepEqual(typical.c_int8_arr, [9223372036854775807n, -1n])
      assert.equal(typical.c_timestamptz, '2024-02-29 07:44:15.5+00')
      const nulls = h.mirror.rows.get(key(4))
      for (const c of COLUMNS.filter((x) => x !== 'c_required')) assert.equal(nulls[c], null, `${c} is null`)

      // replication path: the same values inserted while live
      await sleep(200)
      for (const [variant, id] of Object.entries(VARIANT_IDS)) await insertRow(sql, 100 + id, variant)
      await waitRowsMatchTable(sql, h, 10_000, 'replicated inserts')
      for (const id of Object.values(VARIANT_IDS)) {
        const snap = h.mirror.rows.get(key(id))
        const repl = h.mirror.rows.get(key(100 + id))
        const d = diffRows(new Map([['row', { ...repl, id: 0 }]]), new Map([['row', { ...snap, id: 0 }]]))
        assert.deepEqual(d, [], `row ${100 + id} (replication) parses like row ${id} (snapshot):\n${d.join('\n')}`)
      }

      // replicated updates: values to other values, values to NULL, NULL to values
      await updateRow(sql, 101, 'tricky', COLUMNS.filter((_, i) => i % 2 === 0))
      await updateRow(sql, 102, 'nulls', COLUMNS.filter((c) => c !== 'c_required'))
      await updateRow(sql, 104, 'typical', COLUMNS)
      await updateRow(sql, 1, 'extremes', COLUMNS.filter((_, i) => i % 2 === 1))
      await waitRowsMatchTable(sql, h, 10_000, 'replicated updates')
      await assertRowsMatchTable(sql, h.mirror.rows, 'after replicated updates')

      const expected = await expectedRows(sql)
      t.diagnostic(`checked ${expected.size} rows × ${COLUMNS.length + 1} columns`)
      assert.deepEqual(h.mirror.violations, [])
      assert.equal(h.mirror.errors.length, 0)
      assert.equal(h.mirror.mustRefetch, 0)
    } finally {
      h.close()
    }
  })
})
