// Checks of the harness itself (no ampere needed): the throwaway Postgres, the expected-value
// derivation and the array-literal parser the other tests compare against.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { withEnv } from '../lib/harness.mjs'
import { expectedRows, parsePgArray, tableColumns, rowKey } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'
import { DDL, COLUMNS, VARIANT_IDS, insertRow, updateRow } from '../lib/value-types.mjs'

test('the array-literal parser reads Postgres array output as the client does', () => {
  const id = (s) => s
  assert.deepEqual(parsePgArray('{1,NULL,3}', id), ['1', null, '3'])
  assert.deepEqual(parsePgArray('{}', id), [])
  assert.deepEqual(parsePgArray('{{a,"b c"},{"d\\"e",NULL}}', id), [['a', 'b c'], ['d"e', null]])
  assert.deepEqual(parsePgArray('{"",NULL,"NULL"}', id), ['', null, 'NULL'])
  assert.deepEqual(parsePgArray('{"x,y","{}","a\\\\b"}', id), ['x,y', '{}', 'a\\b'])
  assert.deepEqual(parsePgArray('[0:1]={7,8}', id), ['7', '8'])
})

test('the key of a row follows protocol.md 5.3', () => {
  assert.equal(rowKey('items', ['1']), '"public"."items"/"1"')
  assert.equal(rowKey('items', ['a/b', null, '']), '"public"."items"/"a//b"/_/""')
})

test('a throwaway Postgres with wal_level=logical starts, holds the items table and stops', { timeout: 60_000 }, async () => {
  await withEnv({
    startAmpere: false,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 100))
    },
  }, async ({ sql }) => {
    const { rows: [w] } = await sql.query('SHOW wal_level')
    assert.equal(w.wal_level, 'logical')
    const cols = await tableColumns(sql, 'items')
    assert.deepEqual(cols.map((c) => [c.name, c.type, c.dims, c.notNull, c.pkIndex]), [
      ['id', 'int4', 0, true, 0],
      ['title', 'text', 0, true, undefined],
      ['n', 'int8', 0, false, undefined],
      ['done', 'bool', 0, false, undefined],
      ['score', 'float8', 0, false, undefined],
      ['created_at', 'timestamptz', 0, false, undefined],
      ['tags', 'text', 1, false, undefined],
    ])
    const exp = await expectedRows(sql)
    assert.equal(exp.size, 100)
    assert.deepEqual(exp.get('"public"."items"/"2"'), {
      id: 2, title: 'item 2', n: 2000000014n, done: true, score: 0.6666666666666666,
      created_at: '2024-01-01 00:02:03+00', tags: ['t2', 'x,y', null],
    })
    assert.equal(exp.get('"public"."items"/"7"').title, 'item 7 "quoted" / slash \\ back')
    assert.equal(exp.get('"public"."items"/"3"').tags, null)
  })
})

test('the value-encoding fixtures load and their expected values follow the parse rules', { timeout: 60_000 }, async () => {
  await withEnv({
    startAmpere: false,
    setup: async (sql) => {
      for (const s of DDL) await sql.query(s)
      for (const [variant, id] of Object.entries(VARIANT_IDS)) await insertRow(sql, id, variant)
      await updateRow(sql, 3, 'typical', COLUMNS.filter((_, i) => i % 2 === 0))
    },
  }, async ({ sql }) => {
    const exp = await expectedRows(sql)
    assert.equal(exp.size, 4)
    const t = exp.get('"public"."items"/"1"')
    assert.equal(t.c_bpchar, 'ab   ')
    assert.equal(t.c_bool, true)
    assert.equal(t.c_int8, 1234567890123n)
    assert.deepEqual(t.c_json, { b: 1, a: [1, 2.5, 'x'], n: null })
    assert.deepEqual(t.c_text_2d, [['a', 'b c'], ['d"e', null]])
    assert.deepEqual(t.c_bool_arr, [true, false, null])
    assert.equal(t.c_timestamptz, '2024-02-29 07:44:15.5+00')
    assert.equal(t.c_bytea, '\\x0001ff')
    assert.equal(t.c_interval, 'P1DT2H3M4.5S')
    const x = exp.get('"public"."items"/"2"')
    assert.ok(Number.isNaN(x.c_float4))
    assert.equal(x.c_float8, -Infinity)
    assert.equal(x.c_int8, -9223372036854775808n)
    assert.equal(x.c_bytea, '\\x')
    assert.equal(x.c_date, 'infinity')
    assert.equal(x.c_enum, 'très "bien"')
    const n = exp.get('"public"."items"/"4"')
    for (const c of COLUMNS.filter((c) => c !== 'c_required')) assert.equal(n[c], null)
    if (process.env.CONFORMANCE_DEBUG) console.log(exp)
  })
})
