// `log=changes_only` through the official client (`log: 'changes_only'`): the shape's log holds
// no initial rows, only `snapshot-end`, then every change committed after the shape's snapshot.
// Updates and deletes of rows the client never saw are expected (the Mirror records them in
// `unseen`; the client's own `Shape` ignores them); what must never happen is a row from before
// the snapshot reaching the client, a duplicate insert, or a lost change.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { Shape } from '@electric-sql/client'
import { withEnv } from '../lib/harness.mjs'
import { openStream, expectedRows, diffRows, fmtErr, describeRequests } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const CHANGES_ONLY = { log: 'changes_only' }
const itemKey = (id) => `"public"."items"/"${id}"`
const tKey = (id) => `"public"."t"/"${id}"`

/**
 * Opens a changes_only stream with a `Shape` on it (the official materialisation) and a
 * recorder of every change message the subscriber gets.
 */
function openChangesOnly(shapeUrl, table, extra = {}) {
  const h = openStream(shapeUrl, table, { ...CHANGES_ONLY, ...extra })
  const shape = new Shape(h.stream)
  const changes = []
  h.stream.subscribe((messages) => {
    for (const m of messages) if ('key' in m) changes.push({ op: m.headers.operation, key: m.key })
  })
  return { ...h, shape, changes }
}

/** `SELECT *` of `table` restricted to `keys`, keyed and parsed as the client holds rows. */
async function expectedFor(sql, table, keys) {
  const all = await expectedRows(sql, table)
  return new Map([...all].filter(([k]) => keys.has(k)))
}

/** Waits until both the Mirror's rows and the client's `Shape` equal `expected`. */
async function waitBothMatch(h, expected, timeoutMs, label) {
  await h.mirror.waitUntil(
    () => diffRows(h.mirror.rows, expected, 1).length === 0 && diffRows(h.shape.currentValue, expected, 1).length === 0,
    timeoutMs, label,
    () => `mirror: ${diffRows(h.mirror.rows, expected).join('\n')}\n` +
      `Shape: ${diffRows(h.shape.currentValue, expected).join('\n')}\n${h.diag()}`)
}

/** The keys of the updates and deletes the client got for rows it never had, in order. */
function unseenKeys(h) {
  return h.mirror.unseen.map((u) => u.key)
}

function assertCleanStream(h, label) {
  assert.equal(h.mirror.errors.length, 0, `${label}: client errors: ${h.mirror.errors.map(fmtErr).join('; ')}`)
  assert.equal(h.mirror.mustRefetch, 0, `${label}: no must-refetch\n${describeRequests(h.log, Infinity, { urls: true })}`)
  assert.ok(!h.log.some((e) => e.status >= 400 && e.status < 500), `${label}: no 4xx (409 included)\n${h.diag()}`)
}

test('a changes_only stream on a table of 1,000 rows starts empty, then gets exactly the changes made after it, across a restart', { timeout: 120_000 }, async (t) => {
  await withEnv({
    chunkBytes: 20_000,
    longPollMs: 3000,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 1000))
    },
  }, async ({ sql, ampere }) => {
    const started = performance.now()
    const h = openChangesOnly(ampere.shapeUrl, 'items')
    const full = openStream(ampere.shapeUrl, 'items')
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      t.diagnostic(`changes_only up to date ${(performance.now() - started).toFixed(0)} ms after opening`)
      assert.equal(h.mirror.messages, 0, 'no row of the table reaches a changes_only client')
      assert.equal(h.shape.currentValue.size, 0)
      const first = h.log[0]
      assert.equal(first.offset, '-1')
      assert.equal(first.status, 200)
      assert.equal(first.headers['electric-offset'], '0_0', 'the first answer is the snapshot chunk')
      assert.ok(first.url.includes('log=changes_only'), first.url)
      await full.mirror.waitUntil(() => full.mirror.upToDate > 0, 30_000, 'the full stream', full.diag)
      assert.equal(full.mirror.rows.size, 1000, 'a full stream of the same table still gets every row')
      const handle = h.stream.shapeHandle
      assert.ok(handle)
      assert.notEqual(full.stream.shapeHandle, handle, 'full and changes_only are different shapes')
      await sleep(200) // let the client open its live request

      const created = new Set()
      const touchedUnseen = new Set([itemKey(1), itemKey(2), itemKey(3)])
      await sql.query(itemsInsertRange(1001, 1005))
      for (let id = 1001; id <= 1005; id++) created.add(itemKey(id))
      await sql.query(`UPDATE items SET title = 'seen after', n = 5 WHERE id IN (1, 1001)`)
      await sql.query(`DELETE FROM items WHERE id IN (2, 1002)`)
      created.delete(itemKey(1002))
      await sql.query(`BEGIN;
        INSERT INTO items (id, title) VALUES (2001, 'tx a');
        UPDATE items SET title = 'tx b' WHERE id = 1003;
        UPDATE items SET id = 3003 WHERE id = 1004;
        UPDATE items SET id = 3004, title = 'rekeyed old row' WHERE id = 3;
        COMMIT;`)
      created.add(itemKey(2001))
      created.delete(itemKey(1004))
      created.add(itemKey(3003))
      created.add(itemKey(3004)) // a key change is a delete of the old key and an insert of the whole new row
      await waitBothMatch(h, await expectedFor(sql, 'items', created), 10_000, 'the changes made after the snapshot')

      // The log mode is stored with the shape: after a restart the same handle serves it.
      await ampere.stop('SIGTERM')
      await sql.query(`INSERT INTO items (id, title) VALUES (4001, 'while down')`)
      created.add(itemKey(4001))
      await ampere.start()
      await sql.query(`UPDATE items SET title = 'after restart' WHERE id = 1005`)
      await waitBothMatch(h, await expectedFor(sql, 'items', created), 30_000, 'the changes around a restart')

      const beforeSnapshot = new Set(Array.from({ length: 1000 }, (_, i) => itemKey(i + 1)))
      const oldInserts = h.changes.filter((c) => c.op === 'insert' && beforeSnapshot.has(c.key))
      assert.deepEqual(oldInserts, [], 'no row from before the snapshot reached the client')
      const oldChanges = h.changes.filter((c) => beforeSnapshot.has(c.key)).map((c) => c.key)
      assert.deepEqual(new Set(oldChanges), touchedUnseen, 'the changes of old rows are those made after the snapshot')
      assert.deepEqual(new Set(unseenKeys(h)), touchedUnseen, 'only those are for rows the client never had')
      assert.deepEqual(h.mirror.violations, [], 'no duplicate insert, no change for a row inserted after')
      assertCleanStream(h, 'changes_only stream')
      const handles = new Set(h.log.filter((e) => e.status === 200).map((e) => e.headers['electric-handle']))
      assert.deepEqual([...handles], [handle], 'one handle throughout, the restart included')
    } finally {
      h.close()
      full.close()
    }
  })
})

test('a where-filtered changes_only shape gets rows moving in as inserts of the whole row, and only changes after its snapshot', { timeout: 60_000 }, async () => {
  await withEnv({
    chunkBytes: 20_000,
    longPollMs: 3000,
    setup: async (sql) => {
      await sql.query('CREATE TABLE t (id int4 PRIMARY KEY, n int4, title text NOT NULL, score float8)')
      await sql.query(`INSERT INTO t SELECT g, g % 10, 'row ' || g, g / 4.0 FROM generate_series(1, 1000) g`)
    },
  }, async ({ sql, ampere }) => {
    const h = openChangesOnly(ampere.shapeUrl, 't', { params: { table: 't', where: 'n = $1', params: ['7'] } })
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      assert.equal(h.mirror.messages, 0, 'none of the 100 matching rows is sent')
      await sleep(200)

      const known = new Set()
      await sql.query(`UPDATE t SET n = 7 WHERE id = 1`) // moves in
      known.add(tKey(1))
      await sql.query(`UPDATE t SET title = 'in to in' WHERE id = 7`) // never inserted: ignored by Shape
      await sql.query(`INSERT INTO t VALUES (5001, 7, 'new in', 1.5), (5002, 8, 'new out', 2.5)`)
      known.add(tKey(5001))
      await sql.query(`UPDATE t SET n = 8 WHERE id = 5001`) // moves out: a delete
      known.delete(tKey(5001))
      await sql.query(`UPDATE t SET title = 'moved in, then updated' WHERE id = 1`)
      await sql.query(`UPDATE t SET n = 7, score = NULL WHERE id = 5002`) // moves in
      known.add(tKey(5002))
      const expected = new Map([...await expectedFor(sql, 't', known)])
      await waitBothMatch(h, expected, 10_000, 'the filtered changes')
      assert.equal(expected.size, 2)

      const inserts = h.changes.filter((c) => c.op === 'insert').map((c) => c.key)
      assert.deepEqual(inserts, [tKey(1), tKey(5001), tKey(5002)], 'move-ins and the new row are inserts')
      assert.deepEqual(unseenKeys(h), [tKey(7)], 'only the in→in update of a row the client never saw')
      assert.deepEqual(h.mirror.violations, [])
      assertCleanStream(h, 'filtered changes_only stream')
    } finally {
      h.close()
    }
  })
})

test('offset=now on a changes_only shape starts at the latest offset, new or existing', { timeout: 60_000 }, async () => {
  await withEnv({
    chunkBytes: 20_000,
    longPollMs: 3000,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 1000))
    },
  }, async ({ sql, ampere }) => {
    const a = openChangesOnly(ampere.shapeUrl, 'items', { offset: 'now' })
    let b
    try {
      await a.mirror.waitUntil(() => a.mirror.upToDate > 0, 30_000, 'up-to-date from offset=now', a.diag)
      const first = a.log[0]
      assert.equal(first.offset, 'now')
      assert.equal(first.status, 200)
      assert.equal(first.headers['electric-has-data'], 'false')
      assert.equal(first.headers['electric-up-to-date'], '')
      assert.equal(a.mirror.messages, 0)
      await sleep(200)
      await sql.query(`INSERT INTO items (id, title) VALUES (2001, 'first')`)
      await waitBothMatch(a, await expectedFor(sql, 'items', new Set([itemKey(2001)])), 10_000, 'the first insert')

      // A second client joins the existing shape at its latest offset: it gets nothing of
      // what the shape's log already holds, then the next change.
      b = openChangesOnly(ampere.shapeUrl, 'items', { offset: 'now' })
      await b.mirror.waitUntil(() => b.mirror.upToDate > 0, 30_000, 'the second client up to date', b.diag)
      assert.equal(b.log[0].headers['electric-handle'], a.stream.shapeHandle, 'the same shape')
      assert.notEqual(b.log[0].headers['electric-offset'], '0_inf', 'the latest offset, past the first insert')
      assert.equal(b.mirror.messages, 0, 'nothing from before it joined')
      await sleep(200)
      await sql.query(`INSERT INTO items (id, title) VALUES (2002, 'second')`)
      await sql.query(`UPDATE items SET title = 'edited' WHERE id = 2001`)
      await waitBothMatch(b, await expectedFor(sql, 'items', new Set([itemKey(2002)])), 10_000, 'the second client')
      await waitBothMatch(a, await expectedFor(sql, 'items', new Set([itemKey(2001), itemKey(2002)])), 10_000, 'the first client')
      assert.deepEqual(unseenKeys(b), [itemKey(2001)], 'the update of the row inserted before b joined')
      assert.deepEqual(unseenKeys(a), [])
      assert.deepEqual(b.mirror.violations, [])
      assert.deepEqual(a.mirror.violations, [])
      assertCleanStream(a, 'first client')
      assertCleanStream(b, 'second client')
    } finally {
      a.close()
      b?.close()
    }
  })
})

test('a changes_only shape on a table of 1,000,000 rows is up to date at once', { timeout: 120_000 }, async (t) => {
  await withEnv({
    setup: async (sql) => {
      await sql.query('CREATE TABLE big (id int8 PRIMARY KEY, title text)')
      await sql.query(`INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 1000000) g`)
    },
  }, async ({ sql, ampere }) => {
    const started = performance.now()
    const h = openChangesOnly(ampere.shapeUrl, 'big')
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      const took = performance.now() - started
      t.diagnostic(`1,000,000 rows: changes_only up to date after ${took.toFixed(0)} ms`)
      assert.ok(took < 3000, `up to date after ${took.toFixed(0)} ms: the rows must not be read`)
      assert.equal(h.mirror.messages, 0)
      await sleep(200)
      await sql.query(`INSERT INTO big VALUES (1000001, 'new')`)
      await waitBothMatch(h, new Map([[`"public"."big"/"1000001"`, { id: 1000001n, title: 'new' }]]), 10_000, 'a new row')
      assertCleanStream(h, 'big table')
    } finally {
      h.close()
    }
  })
})
