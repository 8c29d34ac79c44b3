// Client-side helpers: a recording fetchClient, a strict mirror of the shape log, and the
// expected rows computed from Postgres's own text output with the client's parse rules
// (protocol.md §7), written independently of the client's parser.

import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import { ShapeStream } from '@electric-sql/client'

// ---------------------------------------------------------------------------------------------
// Recording fetch

/**
 * A fetchClient that records every request the client makes: URL, whether it is live, the
 * status and the response headers (or the network error).
 */
export function recordingFetch() {
  const log = []
  const fetchClient = async (input, init) => {
    const urlText = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
    const url = new URL(urlText)
    const entry = {
      url: urlText,
      method: init?.method ?? 'GET',
      offset: url.searchParams.get('offset'),
      handle: url.searchParams.get('handle'),
      live: url.searchParams.has('live') && url.searchParams.get('live') !== 'false',
      start: performance.now(),
      status: undefined,
      headers: undefined,
      error: undefined,
    }
    log.push(entry)
    try {
      const res = await fetch(input, init)
      entry.status = res.status
      entry.headers = Object.fromEntries(res.headers)
      return res
    } catch (e) {
      entry.error = e.cause?.code ?? e.name ?? String(e)
      throw e
    }
  }
  return { log, fetchClient }
}

/**
 * One line per request of `log` (the `last` ones): status, offsets, up-to-date; with `urls`,
 * also the handle answered and the URL asked (to show where a 409 came from).
 */
export function describeRequests(log, last = 15, { urls = false } = {}) {
  return log.slice(-last).map((e) =>
    `${e.status ?? e.error} live=${e.live} offset=${e.offset} -> ${e.headers?.['electric-offset'] ?? ''} ` +
    `${e.headers?.['electric-up-to-date'] !== undefined ? 'up-to-date' : ''}` +
    (urls ? ` handle=${e.headers?.['electric-handle'] ?? ''} ${e.url}` : '')).join('\n')
}

// ---------------------------------------------------------------------------------------------
// Mirror: a strict materialisation of the messages the client hands to subscribers.

/**
 * Applies the change messages to a Map keyed by message key, and records violations a correct
 * log never produces: an insert for a key already present (duplicate), an update or delete for
 * a key not present (a lost insert). `must-refetch` clears the map, as `Shape` does.
 *
 * With `changesOnly` (a `log=changes_only` stream) an update or delete of a key not present is
 * expected — a row from before the shape's snapshot, which the client never got — so it is
 * recorded in `unseen` ({op, key}) and not applied, as the client's `Shape` does.
 */
export class Mirror {
  constructor({ changesOnly = false } = {}) {
    this.changesOnly = changesOnly
    this.unseen = []
    this.rows = new Map()
    this.violations = []
    this.mustRefetch = 0
    this.upToDate = 0
    this.batches = 0
    this.messages = 0
    this.errors = []
    this.waiters = new Set()
  }

  onBatch(messages) {
    const now = performance.now()
    this.batches += 1
    for (const m of messages) {
      if (m.headers && 'control' in m.headers) {
        if (m.headers.control === 'must-refetch') {
          this.mustRefetch += 1
          this.rows.clear()
        } else if (m.headers.control === 'up-to-date') {
          this.upToDate += 1
        }
        continue
      }
      if (!('key' in m)) continue
      this.messages += 1
      const op = m.headers?.operation
      const had = this.rows.has(m.key)
      if (this.changesOnly && !had && (op === 'update' || op === 'delete')) {
        this.unseen.push({ op, key: m.key })
        continue
      }
      if (op === 'insert') {
        if (had) this.violations.push(`duplicate insert for ${m.key}`)
        this.rows.set(m.key, { ...m.value })
      } else if (op === 'update') {
        if (!had) this.violations.push(`update for absent ${m.key}`)
        this.rows.set(m.key, { ...this.rows.get(m.key), ...m.value })
      } else if (op === 'delete') {
        if (!had) this.violations.push(`delete for absent ${m.key}`)
        this.rows.delete(m.key)
      } else {
        this.violations.push(`unknown operation ${op} for ${m.key}`)
      }
    }
    for (const w of [...this.waiters]) w.check(now)
  }

  onError(err) {
    this.errors.push(err)
    for (const w of [...this.waiters]) w.check(performance.now())
  }

  /**
   * Resolves with the time (performance.now()) of the subscriber callback after which `cond()`
   * first held (or now, if it already holds). Rejects on a client error or after `timeoutMs`.
   */
  waitUntil(cond, timeoutMs, label, diag = () => '') {
    return new Promise((resolve, reject) => {
      const w = {
        check: (t) => {
          if (this.errors.length) {
            finish()
            reject(new Error(`client error while waiting for ${label}: ${fmtErr(this.errors[0])}\n${diag()}`))
          } else if (cond()) {
            finish()
            resolve(t)
          }
        },
      }
      const timer = setTimeout(() => {
        finish()
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label} ` +
          `(client has ${this.rows.size} rows, ${this.upToDate} up-to-date, ` +
          `${this.mustRefetch} must-refetch)\n${diag()}`))
      }, timeoutMs)
      const finish = () => { clearTimeout(timer); this.waiters.delete(w) }
      this.waiters.add(w)
      w.check(performance.now())
    })
  }
}

/** `promise`, or a rejection naming `label` after `ms`; the timer is always cleared. */
export async function withTimeout(promise, ms, label) {
  let timer
  try {
    return await Promise.race([promise, new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${label}`)), ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}

export function fmtErr(e) {
  if (!e) return String(e)
  const status = e.status !== undefined ? ` status=${e.status}` : ''
  const json = e.json !== undefined ? ` body=${JSON.stringify(e.json)}` : e.text ? ` body=${e.text}` : ''
  return `${e.name ?? 'Error'}: ${e.message}${status}${json}`
}

/**
 * Opens a ShapeStream on `table` with a recording fetchClient, a strict Mirror subscribed to it,
 * an AbortController, and short retry backoff (so a restarted server is found quickly; the
 * client is otherwise unchanged). `close()` unsubscribes and aborts.
 */
export function openStream(shapeUrl, table = 'items', extra = {}) {
  const { log, fetchClient } = recordingFetch()
  const controller = new AbortController()
  const mirror = new Mirror({ changesOnly: extra.log === 'changes_only' })
  const stream = new ShapeStream({
    url: shapeUrl,
    params: { table },
    signal: controller.signal,
    fetchClient,
    backoffOptions: { initialDelay: 100, maxDelay: 1000, multiplier: 1.5 },
    onError: (err) => { mirror.onError(err) }, // returning nothing: the stream stops on errors
    ...extra,
  })
  const unsubscribe = stream.subscribe(
    (messages) => mirror.onBatch(messages),
    (err) => mirror.onError(err),
  )
  const close = () => { unsubscribe(); controller.abort() }
  const diag = () => `requests (last 15 of ${log.length}):\n${describeRequests(log)}`
  return { stream, mirror, log, close, diag, controller }
}

// ---------------------------------------------------------------------------------------------
// Expected rows from Postgres

/** Column metadata of `public.<table>` from the catalog, in attnum order. */
export async function tableColumns(sql, table) {
  const { rows } = await sql.query(`
    SELECT a.attname AS name, a.attnum::int4::text AS attnum, a.attnotnull AS not_null,
           a.attndims::int4::text AS dims, t.typname AS typname, t.typcategory AS category,
           et.typname AS elem_typname,
           (SELECT k.ord - 1
              FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum) AS pk_index
      FROM pg_attribute a
      JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
     WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum`, [`public.${table}`])
  return rows.map((r) => {
    const dims = Number(r.dims)
    const isArray = r.category === 'A'
    return {
      name: r.name,
      notNull: r.not_null === 't' || r.not_null === true,
      // protocol.md 4.2: arrays with attndims > 0 report the element type plus dims
      type: isArray && dims > 0 ? r.elem_typname : r.typname,
      dims: isArray && dims > 0 ? dims : 0,
      pkIndex: r.pk_index === null ? undefined : Number(r.pk_index),
    }
  })
}

/** The client's documented scalar parse rules (protocol.md §7). */
export function parseScalar(type, text) {
  switch (type) {
    case 'int2': case 'int4': case 'float4': case 'float8': return Number(text)
    case 'int8': return BigInt(text)
    case 'bool': return text === 'true' || text === 't'
    case 'json': case 'jsonb': return JSON.parse(text)
    default: return text
  }
}

/**
 * Parses a Postgres array literal (default lower bounds) into nested arrays; an unquoted NULL
 * element is null; quoted elements have backslash escapes removed. Elements go through `elem`.
 */
export function parsePgArray(text, elem) {
  let i = 0
  if (text[0] === '[') { // dimension decoration: [1:2]={...}
    i = text.indexOf('=') + 1
  }
  const parseList = () => {
    assert.equal(text[i], '{', `array literal: expected { at ${i} in ${text}`)
    i += 1
    const out = []
    if (text[i] === '}') { i += 1; return out }
    for (;;) {
      if (text[i] === '{') {
        out.push(parseList())
      } else if (text[i] === '"') {
        i += 1
        let s = ''
        while (text[i] !== '"') {
          if (text[i] === '\\') i += 1
          if (i >= text.length) throw new Error(`unterminated quoted element in ${text}`)
          s += text[i]
          i += 1
        }
        i += 1
        out.push(elem(s))
      } else {
        let j = i
        while (text[j] !== ',' && text[j] !== '}') j += 1
        const raw = text.slice(i, j).trim()
        i = j
        out.push(raw === 'NULL' ? null : elem(raw))
      }
      if (text[i] === ',') { i += 1; continue }
      if (text[i] === '}') { i += 1; return out }
      throw new Error(`array literal: unexpected ${JSON.stringify(text[i])} at ${i} in ${text}`)
    }
  }
  return parseList()
}

/** What the client should hold for `text` (Postgres's text output, or null) in column `col`. */
export function expectedValue(col, text) {
  if (text === null || text === undefined) return null
  if (col.dims > 0) return parsePgArray(text, (s) => (s === null ? null : parseScalar(col.type, s)))
  return parseScalar(col.type, text)
}

/** The shape key of a row (protocol.md 5.3), for a table whose primary key is given. */
export function rowKey(table, pkValues) {
  return `"public"."${table}"` + pkValues.map((v) => (v === null ? '/_' : `/"${String(v).replaceAll('/', '//')}"`)).join('')
}

/**
 * `SELECT *` of the table, each value Postgres's own text output (session settings of 5.4),
 * then parsed with the client's rules. Returns a Map key → row.
 */
export async function expectedRows(sql, table = 'items') {
  const cols = await tableColumns(sql, table)
  const pk = cols.filter((c) => c.pkIndex !== undefined).sort((a, b) => a.pkIndex - b.pkIndex)
  const { rows } = await sql.query(`SELECT * FROM public.${table}`)
  const out = new Map()
  for (const r of rows) {
    const row = {}
    for (const c of cols) row[c.name] = expectedValue(c, r[c.name])
    out.set(rowKey(table, pk.map((c) => r[c.name])), row)
  }
  return out
}

function show(v) {
  return JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n`
    : typeof x === 'number' && !Number.isFinite(x) ? String(x) : x))
}

/** Compares two Maps key → row; returns a short list of differences (empty when equal). */
export function diffRows(actual, expected, max = 8) {
  const diffs = []
  for (const [k, exp] of expected) {
    if (diffs.length >= max) break
    if (!actual.has(k)) { diffs.push(`missing ${k}: ${show(exp)}`); continue }
    const act = actual.get(k)
    const names = new Set([...Object.keys(exp), ...Object.keys(act)])
    for (const n of names) {
      try {
        assert.deepStrictEqual(act[n], exp[n])
      } catch {
        diffs.push(`${k} column ${n}: client ${show(act[n])} (${typeof act[n]}), expected ${show(exp[n])} (${typeof exp[n]})`)
        if (diffs.length >= max) break
      }
    }
  }
  for (const k of actual.keys()) {
    if (diffs.length >= max) break
    if (!expected.has(k)) diffs.push(`extra ${k}: ${show(actual.get(k))}`)
  }
  return diffs
}

/** Asserts the client's rows equal `SELECT *` of the table, with a readable diff. */
export async function assertRowsMatchTable(sql, actual, label, table = 'items') {
  const expected = await expectedRows(sql, table)
  const diffs = diffRows(actual, expected)
  assert.deepEqual(diffs, [], `${label}: client rows (${actual.size}) differ from SELECT * (${expected.size}):\n${diffs.join('\n')}`)
}

/** Waits until the client's rows equal the table (re-checking after each batch). */
export async function waitRowsMatchTable(sql, handle, timeoutMs, label, table = 'items') {
  const expected = await expectedRows(sql, table)
  await handle.mirror.waitUntil(() => diffRows(handle.mirror.rows, expected, 1).length === 0,
    timeoutMs, label, () => `${diffRows(handle.mirror.rows, expected).join('\n')}\n${handle.diag()}`)
}
