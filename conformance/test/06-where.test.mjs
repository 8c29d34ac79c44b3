// Filtered shapes: `where` and `params[n]` through the official client. The expected rows are
// always Postgres's own `SELECT * … WHERE <the same where>` (with the same params), so the
// filter semantics are Postgres's, not a re-implementation in this file.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { withEnv } from '../lib/harness.mjs'
import { openStream, tableColumns, expectedValue, rowKey, diffRows, fmtErr } from '../lib/client.mjs'

// ---------------------------------------------------------------------------------------------
// Helpers

/** mulberry32: a small seeded PRNG, so every run makes the same operations. */
function prng(seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)) // inclusive
  const pick = (arr) => arr[Math.floor(next() * arr.length)]
  return { next, int, pick }
}

const q = (s) => `'${String(s).replaceAll("'", "''")}'`

/**
 * `SELECT * FROM <table> WHERE <where>` with `params` bound as $1…, each value Postgres's text
 * output parsed with the client's rules, keyed like the shape (protocol.md 5.3).
 */
async function expectedWhere(sql, table, where, params = []) {
  const cols = await tableColumns(sql, table)
  const pk = cols.filter((c) => c.pkIndex !== undefined).sort((a, b) => a.pkIndex - b.pkIndex)
  const { rows } = await sql.query(`SELECT * FROM public.${table} WHERE ${where}`, params)
  const out = new Map()
  for (const r of rows) {
    const row = {}
    for (const c of cols) row[c.name] = expectedValue(c, r[c.name])
    out.set(rowKey(table, pk.map((c) => r[c.name])), row)
  }
  return out
}

/** Opens a where-shape on `table` through the client (params as the client's array form). */
function openWhere(shapeUrl, table, where, params) {
  const p = { table, where }
  if (params !== undefined) p.params = params
  return openStream(shapeUrl, table, { params: p })
}

/**
 * Waits until the client's rows equal `SELECT * … WHERE` right now (re-checked after each
 * batch the client delivers), then checks that the mirror saw no impossible message.
 */
async function waitMatchWhere(sql, h, { table, where, params }, timeoutMs, label, also = () => true) {
  const expected = await expectedWhere(sql, table, where, params)
  await h.mirror.waitUntil(() => also() && diffRows(h.mirror.rows, expected, 1).length === 0, timeoutMs, label,
    () => `client ${h.mirror.rows.size} rows, SELECT … WHERE ${expected.size} rows:\n` +
      `${diffRows(h.mirror.rows, expected).join('\n')}\n${h.diag()}`)
  assert.deepEqual(h.mirror.violations, [], `${label}: no duplicate inserts and no changes for absent rows ` +
    '(an out→in move must be an insert, an in→out move a delete)')
  return expected
}

/** Asserts the client never saw a 409, a must-refetch or an error, and used one handle. */
function assertCleanStream(h, label) {
  assert.equal(h.mirror.errors.length, 0, `${label}: client errors: ${h.mirror.errors.map(fmtErr).join('; ')}`)
  assert.equal(h.mirror.mustRefetch, 0, `${label}: no must-refetch`)
  assert.ok(!h.log.some((e) => e.status === 409), `${label}: no 409\n${h.diag()}`)
  const handles = new Set(h.log.filter((e) => e.status === 200).map((e) => e.headers['electric-handle']))
  assert.equal(handles.size, 1, `${label}: one handle throughout, got ${[...handles].join(', ')}`)
}

/** Resolves with the first error the client reports for `h` (bounded). */
async function firstClientError(h, timeoutMs, label) {
  const deadline = Date.now() + timeoutMs
  while (h.mirror.errors.length === 0) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${label}\n${h.diag()}`)
    await sleep(20)
  }
  return h.mirror.errors[0]
}

// ---------------------------------------------------------------------------------------------
// Table `t`: id, n (the filter column), and a few other types the client parses

const T_DDL = `
  CREATE TABLE t (
    id int4 PRIMARY KEY,
    n int4,
    title text NOT NULL,
    score float8,
    big int8,
    tags text[]
  )`
const T_ROWS = 6000
/** ~1/13 of the rows have n = 7; every 17th has n NULL. */
const T_INSERT = `
  INSERT INTO t (id, n, title, score, big, tags)
  SELECT g,
         CASE WHEN g % 17 = 0 THEN NULL ELSE (g * 7919) % 13 END,
         'row ' || g || CASE WHEN g % 5 = 0 THEN ' "q" \\ /' ELSE '' END,
         CASE WHEN g % 9 = 0 THEN NULL ELSE g / 7.0 END,
         g::int8 * 3000000019,
         CASE WHEN g % 4 = 0 THEN NULL ELSE ARRAY['a' || g, NULL] END
    FROM generate_series(1, ${T_ROWS}) AS g`
const N7 = { table: 't', where: 'n = $1', params: ['7'] }

// ---------------------------------------------------------------------------------------------

test('a shape with where n = $1 and params [7] syncs exactly the rows of SELECT * WHERE n = 7', { timeout: 60_000 }, async (t) => {
  await withEnv({
    chunkBytes: 8_000,
    setup: async (sql) => { await sql.query(T_DDL); await sql.query(T_INSERT) },
  }, async ({ sql, ampere }) => {
    const h = openWhere(ampere.shapeUrl, N7.table, N7.where, N7.params)
    const h8 = openWhere(ampere.shapeUrl, 't', 'n = $1', { 1: '8' }) // the object form of params
    try {
      await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'the first up-to-date (n = 7)', h.diag)
      await h8.mirror.waitUntil(() => h8.mirror.upToDate > 0, 30_000, 'the first up-to-date (n = 8)', h8.diag)

      const expected = await expectedWhere(sql, 't', 'n = 7')
      assert.ok(expected.size > 300 && expected.size < T_ROWS / 10, `fixture: ${expected.size} rows have n = 7`)
      const diffs = diffRows(h.mirror.rows, expected)
      assert.deepEqual(diffs, [], `client rows (${h.mirror.rows.size}) differ from SELECT * WHERE n = 7 (${expected.size}):\n${diffs.join('\n')}`)
      assert.deepEqual(h.mirror.violations, [])
      for (const row of h.mirror.rows.values()) assert.equal(row.n, 7, 'every synced row has n = 7')
      const one = [...h.mirror.rows.values()][0]
      assert.equal(typeof one.big, 'bigint', 'int8 parsed as bigint')

      const diffs8 = diffRows(h8.mirror.rows, await expectedWhere(sql, 't', 'n = $1', ['8']))
      assert.deepEqual(diffs8, [], `n = 8 shape differs from SELECT * WHERE n = 8:\n${diffs8.join('\n')}`)

      // the client sent the where and params[1] as query parameters
      const first = new URL(h.log[0].url)
      assert.equal(first.searchParams.get('where'), 'n = $1', `first request: ${h.log[0].url}`)
      assert.equal(first.searchParams.get('params[1]'), '7', `first request: ${h.log[0].url}`)
      assert.equal(h.log[0].status, 200)
      assert.equal(h.log[0].headers['electric-offset'], '0_0')

      // the filtered snapshot is chunked like any other
      const chunks = new Set(h.log.filter((e) => !e.live && e.status === 200)
        .map((e) => e.headers['electric-offset']).filter((o) => /^0_\d+$/.test(o)))
      assert.ok(chunks.size > 1, `the filtered snapshot spans several chunks, got ${[...chunks].join(',')}`)

      // params are part of the shape's identity; the same where+params is the same shape
      assert.notEqual(h8.stream.shapeHandle, h.stream.shapeHandle, 'n = 8 is a different shape from n = 7')
      const again = openWhere(ampere.shapeUrl, N7.table, N7.where, { 1: '7' })
      try {
        await again.mirror.waitUntil(() => again.mirror.upToDate > 0, 15_000, 'a second n = 7 client', again.diag)
        assert.equal(again.stream.shapeHandle, h.stream.shapeHandle, 'the same where and params give the same handle')
        assert.deepEqual(diffRows(again.mirror.rows, expected), [])
      } finally {
        again.close()
      }
      assertCleanStream(h, 'n = 7')
      assertCleanStream(h8, 'n = 8')
      t.diagnostic(`${expected.size} rows with n = 7 in ${chunks.size} snapshot chunks`)
    } finally {
      h.close()
      h8.close()
    }
  })
})

const SEEDS = process.env.CONFORMANCE_WHERE_SEED ? [Number(process.env.CONFORMANCE_WHERE_SEED)] : [0x5eed06, 0x77]
for (const seed of SEEDS) {
  test(`random inserts, moves in and out of n = 7, primary-key changes and deletes keep the client equal to SELECT * WHERE n = 7 (seed ${seed})`, { timeout: 90_000 }, async (t) => {
    await withEnv({
      chunkBytes: 50_000,
      longPollMs: 3000,
      setup: async (sql) => { await sql.query(T_DDL); await sql.query(T_INSERT.replace(`${T_ROWS}`, '600')) },
    }, async ({ sql, ampere }) => {
      // a JS model of (id → n), only to aim the operations and count what they exercise
      const model = new Map()
      for (const r of (await sql.query('SELECT id, n FROM t')).rows) model.set(Number(r.id), r.n === null ? null : Number(r.n))
      const rnd = prng(seed)
      let nextId = 100_000
      const stats = { insertIn: 0, insertOut: 0, moveIn: 0, moveOut: 0, stayIn: 0, stayOut: 0, pkIn: 0, pkOut: 0,
        pkMoveIn: 0, pkMoveOut: 0, deleteIn: 0, deleteOut: 0, bulkMoves: 0 }
      const ids = () => [...model.keys()]
      const otherN = () => rnd.pick([0, 1, 2, 3, 6, 8, 9, 12, null])
      const randomN = () => (rnd.next() < 0.4 ? 7 : otherN())
      const lit = (n) => (n === null ? 'NULL' : String(n))
      const where7 = ({ n }) => n === 7

      /** One random operation: returns its SQL and updates the model. */
      const op = () => {
        const r = rnd.next()
        if (r < 0.2 || model.size < 50) {
          const id = nextId++
          const n = randomN()
          model.set(id, n)
          stats[where7({ n }) ? 'insertIn' : 'insertOut'] += 1
          return `INSERT INTO t (id, n, title, score, big, tags) VALUES (${id}, ${lit(n)}, ${q(`new ${id} 'x'`)}, ${rnd.int(-50, 50) / 4}, ${rnd.int(0, 9) * 1e15}, ${rnd.next() < 0.5 ? 'NULL' : "'{p,\"q r\"}'"})`
        }
        // half the time aim at a row in the shape (only ~1/13 of the rows are), so in→out,
        // in→in and deletes of in-rows are exercised as often as the rest
        const inside = ids().filter((x) => model.get(x) === 7)
        const id = rnd.pick(rnd.next() < 0.5 && inside.length ? inside : ids())
        const cur = model.get(id)
        const wasIn = cur === 7
        if (r < 0.55) { // change n: moves the row in or out (or keeps it where it is)
          const n = wasIn ? (rnd.next() < 0.8 ? otherN() : 7) : (rnd.next() < 0.6 ? 7 : otherN())
          model.set(id, n)
          const isIn = n === 7
          stats[wasIn ? (isIn ? 'stayIn' : 'moveOut') : (isIn ? 'moveIn' : 'stayOut')] += 1
          const extra = rnd.next() < 0.5 ? `, title = ${q(`moved ${id} ${rnd.int(0, 999)}`)}` : ''
          return `UPDATE t SET n = ${lit(n)}${extra} WHERE id = ${id}`
        }
        if (r < 0.67) { // change other columns only
          stats[wasIn ? 'stayIn' : 'stayOut'] += 1
          return `UPDATE t SET title = ${q(`edit ${rnd.int(0, 99999)}`)}, score = ${rnd.next() < 0.2 ? 'NULL' : rnd.int(-100, 100) / 8}, tags = '{}' WHERE id = ${id}`
        }
        if (r < 0.85) { // primary-key change, sometimes with a move
          const newId = nextId++
          model.delete(id)
          let setN = ''
          let n = cur
          if (rnd.next() < 0.4) { n = wasIn ? otherN() : 7; setN = `, n = ${lit(n)}` }
          model.set(newId, n)
          const isIn = n === 7
          stats[wasIn && isIn ? 'pkIn' : !wasIn && !isIn ? 'pkOut' : isIn ? 'pkMoveIn' : 'pkMoveOut'] += 1
          return `UPDATE t SET id = ${newId}${setN} WHERE id = ${id}`
        }
        model.delete(id)
        stats[wasIn ? 'deleteIn' : 'deleteOut'] += 1
        return `DELETE FROM t WHERE id = ${id}`
      }

      /** A statement moving many rows at once: several into the shape, several out. */
      const bulk = () => {
        const all = ids()
        const ins = all.filter((id) => model.get(id) !== 7).filter(() => rnd.next() < 0.05).slice(0, 15)
        const outs = all.filter((id) => model.get(id) === 7).filter(() => rnd.next() < 0.15).slice(0, 15)
        for (const id of ins) model.set(id, 7)
        for (const id of outs) model.set(id, 3)
        stats.bulkMoves += ins.length + outs.length
        const list = (xs) => (xs.length ? xs.join(',') : 'NULL')
        return `UPDATE t SET n = CASE WHEN n IS DISTINCT FROM 7 THEN 7 ELSE 3 END WHERE id IN (${list(ins)}) OR id IN (${list(outs)})`
      }

      const h = openWhere(ampere.shapeUrl, N7.table, N7.where, N7.params)
      try {
        await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
        await waitMatchWhere(sql, h, N7, 5000, 'after the initial sync')

        const BATCHES = 5
        const OPS_PER_BATCH = 40
        let ops = 0
        for (let b = 0; b < BATCHES; b++) {
          const upBefore = h.mirror.upToDate
          let left = OPS_PER_BATCH
          let txs = 0
          while (left > 0) {
            const size = Math.min(left, rnd.int(1, 14))
            const stmts = []
            for (let i = 0; i < size; i++) stmts.push(op())
            if (txs === 1) stmts.push(bulk())
            left -= size
            ops += size
            txs += 1
            await sql.query(`BEGIN;\n${stmts.join(';\n')};\nCOMMIT;`)
          }
          // the client's rows equal the table at a callback after an up-to-date of this batch
          // (in live mode every response the client hands over ends with up-to-date)
          const exp = await waitMatchWhere(sql, h, N7, 10_000, `batch ${b + 1} (${txs} transactions)`,
            () => h.mirror.upToDate > upBefore)
          // the model agrees with Postgres (the test aims where it thinks it does)
          assert.equal(exp.size, [...model.values()].filter((n) => n === 7).length, 'model vs table')
        }
        t.diagnostic(`${ops} operations: ${JSON.stringify(stats)}`)
        for (const k of ['insertIn', 'moveIn', 'moveOut', 'stayIn', 'pkIn', 'pkMoveIn', 'pkMoveOut', 'deleteIn', 'deleteOut']) {
          assert.ok(stats[k] > 0, `the seeded operations exercise ${k}`)
        }
        assertCleanStream(h, 'live n = 7')
        assert.ok(h.log.some((e) => e.live), 'the client made live requests')
      } finally {
        h.close()
      }
    })
  })
}

// ---------------------------------------------------------------------------------------------
// A richer where over numeric, text, bool and int8 columns

const P_DDL = `
  CREATE TABLE p (
    id int4 PRIMARY KEY,
    title text,
    price numeric(8,2),
    flag bool,
    qty int8
  )`
const RICH = [
  { table: 'p', where: `title ILIKE '%ab%' AND price > 10.5 OR flag IS NULL` },
  { table: 'p', where: 'qty BETWEEN $1 AND $2 AND NOT flag OR title LIKE $3', params: ['100', '5000', 'B%'] },
]

test('richer wheres (ILIKE, numeric >, IS NULL, BETWEEN, NOT, LIKE with params) keep the client equal to SELECT * WHERE after mutations', { timeout: 90_000 }, async (t) => {
  const rnd = prng(0xabcdef)
  const title = () => (rnd.next() < 0.08 ? 'NULL'
    : q(Array.from({ length: rnd.int(1, 6) }, () => rnd.pick(['a', 'b', 'A', 'B', 'c', '%', '_'])).join('')))
  const price = () => (rnd.next() < 0.1 ? 'NULL' : rnd.pick(['10.50', '10.51', '10.49', `${rnd.int(0, 2000) / 100}`]))
  const flag = () => rnd.pick(['true', 'false', 'NULL', 'false'])
  const qty = () => (rnd.next() < 0.1 ? 'NULL' : rnd.pick(['100', '5000', '99', '5001', String(rnd.int(0, 8000))]))
  const rowValues = (id) => `(${id}, ${title()}, ${price()}, ${flag()}, ${qty()})`

  await withEnv({
    chunkBytes: 50_000,
    longPollMs: 3000,
    setup: async (sql) => {
      await sql.query(P_DDL)
      const vals = []
      for (let id = 1; id <= 800; id++) vals.push(rowValues(id))
      await sql.query(`INSERT INTO p VALUES ${vals.join(',\n')}`)
    },
  }, async ({ sql, ampere }) => {
    const ids = new Set((await sql.query('SELECT id FROM p')).rows.map((r) => Number(r.id)))
    let nextId = 10_000
    const op = () => {
      const r = rnd.next()
      if (r < 0.2) { const id = nextId++; ids.add(id); return `INSERT INTO p VALUES ${rowValues(id)}` }
      const id = rnd.pick([...ids])
      if (r < 0.75) {
        const sets = []
        if (rnd.next() < 0.5) sets.push(`title = ${title()}`)
        if (rnd.next() < 0.5) sets.push(`price = ${price()}`)
        if (rnd.next() < 0.4) sets.push(`flag = ${flag()}`)
        if (rnd.next() < 0.4 || sets.length === 0) sets.push(`qty = ${qty()}`)
        return `UPDATE p SET ${sets.join(', ')} WHERE id = ${id}`
      }
      if (r < 0.87) { const newId = nextId++; ids.delete(id); ids.add(newId); return `UPDATE p SET id = ${newId}, flag = ${flag()} WHERE id = ${id}` }
      ids.delete(id)
      return `DELETE FROM p WHERE id = ${id}`
    }

    const hs = RICH.map((s) => openWhere(ampere.shapeUrl, s.table, s.where, s.params))
    try {
      for (const [i, h] of hs.entries()) {
        await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, `initial up-to-date of ${RICH[i].where}`, h.diag)
        const exp = await waitMatchWhere(sql, h, RICH[i], 5000, `initial sync of ${RICH[i].where}`)
        assert.ok(exp.size > 20 && exp.size < 780, `fixture: ${exp.size} rows match ${RICH[i].where}`)
      }
      for (let b = 0; b < 4; b++) {
        for (let tx = 0; tx < 4; tx++) {
          const stmts = Array.from({ length: rnd.int(1, 15) }, op)
          await sql.query(`BEGIN;\n${stmts.join(';\n')};\nCOMMIT;`)
        }
        for (const [i, h] of hs.entries()) {
          await waitMatchWhere(sql, h, RICH[i], 10_000, `batch ${b + 1}: ${RICH[i].where}`)
        }
      }
      // a few edges: the boundary of price > 10.5, and NULL flag bringing any row in
      await sql.query(`INSERT INTO p VALUES (90001, 'xABy', 10.50, false, 1), (90002, 'xaby', 10.51, false, 1),
                                            (90003, NULL, NULL, NULL, NULL), (90004, 'Bee', 1, false, 100)`)
      await sql.query(`UPDATE p SET flag = true WHERE id = 90003`)
      await sql.query(`UPDATE p SET qty = 5001 WHERE id = 90004`)
      for (const [i, h] of hs.entries()) await waitMatchWhere(sql, h, RICH[i], 10_000, `edges: ${RICH[i].where}`)
      const [rich, withParams] = hs
      assert.ok(!rich.mirror.rows.has(rowKey('p', [90001])), 'price 10.50 is not > 10.5')
      assert.ok(rich.mirror.rows.has(rowKey('p', [90002])), "price 10.51 > 10.5 and 'xaby' ILIKE '%ab%'")
      assert.ok(!rich.mirror.rows.has(rowKey('p', [90003])), 'flag NULL → true moved the row out')
      assert.ok(withParams.mirror.rows.has(rowKey('p', [90004])), "'Bee' LIKE 'B%'")
      for (const [i, h] of hs.entries()) assertCleanStream(h, RICH[i].where)
      t.diagnostic(`rows: ${hs.map((h) => h.mirror.rows.size).join(', ')}`)
    } finally {
      for (const h of hs) h.close()
    }
  })
})

// ---------------------------------------------------------------------------------------------

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`after ${signal} and a restart on the same storage dir a where-shape keeps its handle and keeps receiving filtered changes`, { timeout: 90_000 }, async (t) => {
    await withEnv({
      chunkBytes: 20_000,
      longPollMs: 3000,
      setup: async (sql) => { await sql.query(T_DDL); await sql.query(T_INSERT.replace(`${T_ROWS}`, '1000')) },
    }, async ({ sql, ampere }) => {
      const h = openWhere(ampere.shapeUrl, N7.table, N7.where, N7.params)
      try {
        await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
        await waitMatchWhere(sql, h, N7, 5000, 'after the initial sync')
        await sql.query(`INSERT INTO t (id, n, title) VALUES (50001, 7, 'live before restart')`)
        await h.mirror.waitUntil(() => h.mirror.rows.has(rowKey('t', [50001])), 5000, 'a live insert before the restart', h.diag)
        const handle = h.stream.shapeHandle
        assert.ok(handle)

        const exit = await ampere.stop(signal)
        t.diagnostic(`ampere exit: ${JSON.stringify(exit)}`)
        // while down: moves in and out, a primary-key change of an in-row, deletes, inserts
        const inIds = (await sql.query('SELECT id FROM t WHERE n = 7 ORDER BY id LIMIT 6')).rows.map((r) => r.id)
        const outIds = (await sql.query('SELECT id FROM t WHERE n = 3 ORDER BY id LIMIT 6')).rows.map((r) => r.id)
        await sql.query(`UPDATE t SET n = 8 WHERE id IN (${inIds.slice(0, 2).join(',')})`)
        await sql.query(`UPDATE t SET n = 7, title = 'moved in while down' WHERE id IN (${outIds.slice(0, 3).join(',')})`)
        await sql.query(`BEGIN;
          UPDATE t SET id = 60001 WHERE id = ${inIds[2]};
          DELETE FROM t WHERE id = ${inIds[3]};
          INSERT INTO t (id, n, title) VALUES (60002, 7, 'in, while down'), (60003, 1, 'out, while down');
          COMMIT;`)
        await ampere.start()

        await waitMatchWhere(sql, h, N7, 30_000, 'the writes made while ampere was down')
        // live after the restart: a move in, a move out, an insert
        await sql.query(`UPDATE t SET n = 7 WHERE id = ${outIds[4]}`)
        await sql.query(`UPDATE t SET n = NULL WHERE id = ${inIds[4]}`)
        await sql.query(`INSERT INTO t (id, n, title) VALUES (60004, 7, 'live after restart')`)
        await waitMatchWhere(sql, h, N7, 10_000, 'live changes after the restart')
        assert.ok(h.mirror.rows.has(rowKey('t', [60004])) && !h.mirror.rows.has(rowKey('t', [inIds[4]])))

        assertCleanStream(h, 'across the restart')
        assert.equal(h.stream.shapeHandle, handle, 'the stream kept its handle')
        assert.ok(h.log.some((e) => e.error), 'the client did see ampere go away')

        // a fresh client with the same where and params gets the persisted handle and the same rows
        const fresh = openWhere(ampere.shapeUrl, N7.table, N7.where, N7.params)
        try {
          await fresh.mirror.waitUntil(() => fresh.mirror.upToDate > 0, 15_000, 'a fresh client after the restart', fresh.diag)
          assert.equal(fresh.log[0].headers['electric-handle'], handle, 'a fresh client gets the persisted handle')
          await waitMatchWhere(sql, fresh, N7, 5000, 'fresh client after the restart')
        } finally {
          fresh.close()
        }
      } finally {
        h.close()
      }
    })
  })
}

// ---------------------------------------------------------------------------------------------

const SYNTAX_ERROR_BODY = { message: 'Invalid request', errors: { where: ['At location 17: syntax error at or near "x"'] } }
const HOSTILE = ['1=1) OR (1=1', 'id = 1; DROP TABLE t', 'pg_sleep(1) IS NULL', 'id IN (SELECT 1)', 'id = 1 -- x']

async function rawShape(ampere, query) {
  const url = `${ampere.shapeUrl}?${new URLSearchParams({ table: 't', offset: '-1', ...query })}`
  const t0 = Date.now()
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) })
  const text = await res.text()
  let json
  try { json = JSON.parse(text) } catch { /* not JSON */ }
  return { url, status: res.status, text, json, ms: Date.now() - t0, contentType: res.headers.get('content-type') }
}

test('a malformed where is a 400 on where the client surfaces, and hostile wheres are 400s that leave the table intact', { timeout: 60_000 }, async (t) => {
  await withEnv({
    setup: async (sql) => { await sql.query(T_DDL); await sql.query(T_INSERT.replace(`${T_ROWS}`, '300')) },
  }, async ({ sql, ampere }) => {
    const fingerprint = async () => (await sql.query(
      `SELECT count(*)::text AS c, coalesce(sum(hashtext(t::text)::int8), 0)::text AS h FROM t`)).rows[0]
    const before = await fingerprint()

    // raw: the exact body Electric gives
    const raw = await rawShape(ampere, { where: '1 x 1' })
    assert.equal(raw.status, 400, `${raw.url} → ${raw.status} ${raw.text}`)
    assert.match(raw.contentType ?? '', /application\/json/, 'the 400 is JSON')
    assert.deepEqual(raw.json, SYNTAX_ERROR_BODY, `${raw.url} body: ${raw.text}`)

    // through the client: a FetchError with status 400 and the same body, and no retry loop
    const h = openWhere(ampere.shapeUrl, 't', '1 x 1')
    try {
      const err = await firstClientError(h, 10_000, 'the client to surface the 400')
      assert.equal(err.name, 'FetchError', fmtErr(err))
      assert.equal(err.status, 400, fmtErr(err))
      assert.deepEqual(err.json, SYNTAX_ERROR_BODY, fmtErr(err))
      assert.equal(h.mirror.rows.size, 0)
      assert.ok(h.log.every((e) => e.status === 400), `every request was a 400:\n${h.diag()}`)
    } finally {
      h.close()
    }

    // hostile wheres: each a 400 on `where` (nothing else), answered promptly
    const seen = []
    for (const where of HOSTILE) {
      const r = await rawShape(ampere, { where })
      seen.push(`${JSON.stringify(where)} → ${r.status} ${r.text}`)
      assert.equal(r.status, 400, `where=${JSON.stringify(where)}: ${r.status} ${r.text}`)
      assert.equal(r.json?.message, 'Invalid request', `where=${JSON.stringify(where)}: ${r.text}`)
      assert.deepEqual(Object.keys(r.json?.errors ?? {}), ['where'], `where=${JSON.stringify(where)}: the error is on where: ${r.text}`)
      assert.ok(Array.isArray(r.json.errors.where) && r.json.errors.where.length >= 1 &&
        r.json.errors.where.every((m) => typeof m === 'string' && m.length > 0), `where=${JSON.stringify(where)}: ${r.text}`)
      assert.ok(r.ms < 1000, `where=${JSON.stringify(where)} answered in ${r.ms} ms (nothing was run)`)
    }
    // and through the client too
    for (const where of HOSTILE) {
      const hh = openWhere(ampere.shapeUrl, 't', where)
      try {
        const err = await firstClientError(hh, 10_000, `the client to surface the 400 for ${where}`)
        assert.equal(err.status, 400, `client, where=${JSON.stringify(where)}: ${fmtErr(err)}`)
        assert.deepEqual(Object.keys(err.json?.errors ?? {}), ['where'], `client, where=${JSON.stringify(where)}: ${fmtErr(err)}`)
      } finally {
        hh.close()
      }
    }
    for (const line of seen) t.diagnostic(line)

    // the table is intact and ampere still serves a valid where-shape on it
    assert.equal((await sql.query(`SELECT to_regclass('public.t')::text AS r`)).rows[0].r, 't', 'table t still exists')
    assert.deepEqual(await fingerprint(), before, 'table t unchanged')
    const ok = openWhere(ampere.shapeUrl, N7.table, N7.where, N7.params)
    try {
      await ok.mirror.waitUntil(() => ok.mirror.upToDate > 0, 15_000, 'a valid where-shape after the bad ones', ok.diag)
      await waitMatchWhere(sql, ok, N7, 5000, 'a valid where-shape after the bad ones')
    } finally {
      ok.close()
    }
  })
})
