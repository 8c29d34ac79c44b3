// Subset snapshots (protocol.md §3.6, §5.7, §6.10) and shape deletion (§1.5) through the
// official client: `requestSnapshot` on a changes_only stream (TanStack DB's on-demand sync)
// must return exactly the rows Postgres's `SELECT … ORDER BY … LIMIT` returns, in that order,
// and the changes that follow must reach the client once each; `fetchSnapshot` returns rows
// without touching the stream; a deleted shape sends its clients round a 409 to a new one.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Shape } from '@electric-sql/client'
import { withEnv } from '../lib/harness.mjs'
import { openStream, expectedRows, diffRows, fmtErr, describeRequests, waitRowsMatchTable } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const itemKey = (id) => `"public"."items"/"${id}"`

/** The keys, in order, of `SELECT id FROM items WHERE <where> ORDER BY <order> LIMIT … OFFSET …`. */
async function selectKeys(sql, where, params, orderBy, limit, offset = 0) {
  const { rows } = await sql.query(
    `SELECT id FROM items WHERE ${where} ORDER BY ${orderBy} LIMIT ${limit} OFFSET ${offset}`, params)
  return rows.map((r) => itemKey(r.id))
}

/** Asserts a snapshot's rows are `keys` in order, each with the table's current values. */
function assertSnapshotRows(data, keys, table, label) {
  assert.deepEqual(data.map((m) => m.key), keys, `${label}: the rows and their order`)
  for (const m of data) {
    assert.equal(m.headers.operation, 'insert', `${label}: ${m.key} is an insert`)
    assert.equal(typeof m.headers.snapshot_mark, 'number', `${label}: ${m.key} carries the snapshot mark`)
    const diffs = diffRows(new Map([[m.key, m.value]]), new Map([[m.key, table.get(m.key)]]))
    assert.deepEqual(diffs, [], `${label}: ${m.key}'s values`)
  }
}

test('requestSnapshot on a changes_only stream (GET and POST) returns the rows of SELECT … ORDER BY … LIMIT, and later changes arrive once', { timeout: 120_000 }, async (t) => {
  await withEnv({
    longPollMs: 3000,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 600))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl, 'items', { log: 'changes_only' })
    const shape = new Shape(h.stream)
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      assert.equal(h.mirror.rows.size, 0, 'a changes_only stream starts empty')
      const table = await expectedRows(sql, 'items')

      // GET: where with params, a descending order with NULLs placed, a limit.
      const get = await h.stream.requestSnapshot({
        where: 'n > $1 AND title LIKE $2', params: { 1: '1000000000', 2: 'item 2%' },
        orderBy: 'done DESC NULLS LAST, id DESC', limit: 25, method: 'GET',
      })
      // Numbers order as numbers (ids 299…290 then 289…, never 29 among them as text would).
      const getKeys = await selectKeys(sql, "n > $1 AND title LIKE $2", ['1000000000', 'item 2%'],
        'done DESC NULLS LAST, id DESC', 25)
      assert.equal(getKeys.length, 25)
      assertSnapshotRows(get.data, getKeys, table, 'GET subset')
      assert.ok(BigInt(get.metadata.xmax) >= BigInt(get.metadata.xmin), JSON.stringify(get.metadata))
      assert.ok(BigInt(get.metadata.database_lsn) > 0n, JSON.stringify(get.metadata))

      // POST: the subset in the body, an offset, ascending text order (the database's collation).
      const post = await h.stream.requestSnapshot({
        where: 'done = true', orderBy: 'title', limit: 10, offset: 5, method: 'POST',
      })
      const postKeys = await selectKeys(sql, 'done = true', [], 'title', 10, 5)
      assertSnapshotRows(post.data, postKeys, table, 'POST subset')
      const postRequest = h.log.find((e) => e.method === 'POST')
      assert.ok(postRequest, `a POST was sent\n${describeRequests(h.log, 30, { urls: true })}`)

      // The stream holds both subsets' rows, once each, as the client's Shape does.
      const loaded = new Set([...getKeys, ...postKeys])
      await h.mirror.waitUntil(() => h.mirror.rows.size === loaded.size, 10_000, 'subset rows applied', h.diag)
      assert.deepEqual([...h.mirror.rows.keys()].sort(), [...loaded].sort())
      assert.deepEqual(h.mirror.violations, [])

      // Changes after the reads: to loaded rows, to other rows, new rows, a delete.
      const [a, b, c] = getKeys.slice(0, 3).map((k) => Number(k.split('/"')[1].slice(0, -1)))
      await sql.query(`UPDATE items SET title = 'renamed ' || id WHERE id IN (${a}, ${b})`)
      await sql.query(`DELETE FROM items WHERE id = ${c}`)
      await sql.query(itemsInsertRange(601, 605))
      const current = await expectedRows(sql, 'items')
      const expected = new Map([...current].filter(([k]) =>
        loaded.has(k) || Number(k.split('/"')[1].slice(0, -1)) > 600))
      await h.mirror.waitUntil(() => diffRows(h.mirror.rows, expected, 1).length === 0, 20_000,
        'changes after the subsets', () => `${diffRows(h.mirror.rows, expected).join('\n')}\n${h.diag()}`)
      await h.mirror.waitUntil(() => diffRows(shape.currentValue, expected, 1).length === 0, 10_000,
        'the Shape agrees', () => diffRows(shape.currentValue, expected).join('\n'))
      assert.deepEqual(h.mirror.violations, [], 'no duplicate insert, no change applied twice')
      assert.equal(h.mirror.mustRefetch, 0)
      assert.equal(h.mirror.errors.length, 0, h.mirror.errors.map(fmtErr).join('; '))
      t.diagnostic(`GET subset ${get.data.length} rows, POST subset ${post.data.length} rows; ` +
        `${h.log.length} requests in all`)
    } finally {
      h.close()
    }
  })
})

test('fetchSnapshot returns the rows without touching the stream, and bad subsets get the exact 400s', { timeout: 90_000 }, async () => {
  await withEnv({
    longPollMs: 3000,
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 200))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl, 'items', { log: 'changes_only', subsetMethod: 'POST' })
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
      const offset = h.stream.lastOffset
      const fetched = await h.stream.fetchSnapshot({ where: 'id <= 50', orderBy: 'id DESC', limit: 7 })
      const keys = await selectKeys(sql, 'id <= 50', [], 'id DESC', 7)
      assertSnapshotRows(fetched.data, keys, await expectedRows(sql, 'items'), 'fetchSnapshot')
      assert.equal(h.mirror.rows.size, 0, 'fetchSnapshot injects nothing into the stream')
      assert.equal(h.stream.lastOffset, offset, 'the stream offset is unchanged')

      // The wire answers, exactly.
      const handle = h.stream.shapeHandle
      const base = `${ampere.shapeUrl}?table=items&log=changes_only&offset=-1`
      const noOrder = await fetch(`${base}&subset__limit=3`)
      assert.equal(noOrder.status, 400)
      assert.deepEqual(await noOrder.json(), {
        message: 'Invalid request',
        errors: { subset: { order_by: ['order_by is required when limit or offset is present'] } },
      })
      const divide = await fetch(`${base}&subset__where=${encodeURIComponent('id / 0 = 1')}`)
      assert.equal(divide.status, 400)
      assert.deepEqual(await divide.json(), {
        message: 'Invalid request', errors: { subset: { where: 'division by zero' } },
      })
      const ok = await fetch(`${base}&subset__where=id%3D1`)
      assert.equal(ok.status, 200)
      assert.equal(ok.headers.get('electric-snapshot'), 'true')
      assert.equal(ok.headers.get('electric-handle'), handle)
      assert.equal(ok.headers.get('cache-control'), 'no-cache')
      const body = await ok.text()
      assert.match(body, /^\{"metadata":\{"database_lsn":"\d+","snapshot_mark":\d+,"xip_list":\[[^\]]*\],"xmax":"\d+","xmin":"\d+"\}, "data": \[/)
    } finally {
      h.close()
    }
  })
})

test('a deleted shape sends its client round a 409 to a new handle, and it re-converges', { timeout: 90_000 }, async () => {
  await withEnv({
    longPollMs: 3000,
    extraEnv: { ELECTRIC_ENABLE_INTEGRATION_TESTING: 'true' },
    setup: async (sql) => {
      await sql.query(ITEMS_DDL)
      await sql.query(itemsInsertRange(1, 50))
    },
  }, async ({ sql, ampere }) => {
    const h = openStream(ampere.shapeUrl, 'items')
    try {
      await waitRowsMatchTable(sql, h, 30_000, 'initial sync')
      const before = h.stream.shapeHandle
      const deleted = await fetch(`${ampere.shapeUrl}?table=items&handle=${before}`, { method: 'DELETE' })
      assert.equal(deleted.status, 202)
      await sql.query(itemsInsertRange(51, 55))
      await h.mirror.waitUntil(() => h.mirror.mustRefetch > 0, 20_000, 'a must-refetch', h.diag)
      await waitRowsMatchTable(sql, h, 30_000, 'after the deletion')
      assert.notEqual(h.stream.shapeHandle, before, 'a new handle')
      assert.ok(h.log.some((e) => e.status === 409), h.diag())
      assert.deepEqual(h.mirror.violations, [])
      assert.equal(h.mirror.errors.length, 0, h.mirror.errors.map(fmtErr).join('; '))
    } finally {
      h.close()
    }
  })
})
