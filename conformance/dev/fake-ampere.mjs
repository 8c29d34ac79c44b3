#!/usr/bin/env node
// NOT ampere. A deliberately naive stand-in used only to check the conformance tests themselves
// (their wiring, waits and assertions) while the real server is not there:
//
//   AMPERE_BIN=conformance/dev/fake-ampere.mjs node --test conformance/
//
// It speaks just enough of the shape protocol (protocol.md §2, §4, §6.2–6.3, §6.8) for the
// official client, and it finds changes by polling `SELECT *` every 25 ms and diffing (no
// logical replication). TRUNCATE is seen as a relfilenode change and invalidates the shape.
// State is written to ELECTRIC_STORAGE_DIR after every change, so it survives SIGTERM/SIGKILL.

import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import pg from 'pg'

const PORT = Number(process.env.ELECTRIC_PORT ?? 3000)
const STORAGE = process.env.ELECTRIC_STORAGE_DIR ?? './fake-storage'
const CHUNK = Number(process.env.ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD ?? 10 * 1024 * 1024)
const LONG_POLL = Number(process.env.ELECTRIC_LONG_POLL_TIMEOUT ?? 20_000)
const STATE_FILE = path.join(STORAGE, 'fake-state.json')

const sql = new pg.Client({ connectionString: process.env.DATABASE_URL, types: { getTypeParser: () => (v) => v } })
await sql.connect()
for (const s of ["SET DateStyle='ISO, DMY'", "SET TimeZone='UTC'", 'SET extra_float_digits=1',
  "SET bytea_output='hex'", "SET IntervalStyle='iso_8601'"]) await sql.query(s)

// state: { lsn, shapes: { [table]: shape }, retired: [handles] }
// shape: { handle, table, schema, pk, relfilenode, chunks: [[line]], log: [{tx, op, line}], rows: {key: row} }
let state = { lsn: 1000, shapes: {}, retired: [] }
fs.mkdirSync(STORAGE, { recursive: true })
if (fs.existsSync(STATE_FILE)) state = JSON.parse(fs.readFileSync(STATE_FILE, 'utf8'))
function persist() {
  fs.writeFileSync(`${STATE_FILE}.tmp`, JSON.stringify(state))
  fs.renameSync(`${STATE_FILE}.tmp`, STATE_FILE)
}

const waiters = new Set()
const wake = () => { for (const w of [...waiters]) w() }

async function describe(table) {
  const { rows } = await sql.query(`
    SELECT a.attname, a.attnotnull, a.attndims::int4::text AS dims, t.typname, t.typcategory, et.typname AS et,
           (SELECT k.ord - 1 FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(n, ord)
             WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.n = a.attnum)::text AS pk
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem
     WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attname`, [`public.${table}`])
  const schema = {}
  const pk = []
  for (const r of rows) {
    const dims = Number(r.dims)
    const e = r.typcategory === 'A' && dims > 0 ? { type: r.et, dims } : { type: r.typname }
    if (r.pk !== null) { e.pk_index = Number(r.pk); pk[e.pk_index] = r.attname }
    if (r.attnotnull === 't') e.not_null = true
    schema[r.attname] = e
  }
  const { rows: [{ relfilenode }] } = await sql.query('SELECT relfilenode FROM pg_class WHERE oid = $1::regclass', [`public.${table}`])
  return { schema, pk, relfilenode }
}

const keyOf = (shape, row) => `"public"."${shape.table}"` + shape.pk.map((c) => `/"${String(row[c]).replaceAll('/', '//')}"`).join('')
const snapBool = (shape, row) => Object.fromEntries(Object.entries(row).map(([k, v]) =>
  [k, shape.schema[k]?.type === 'bool' && !shape.schema[k].dims && v !== null ? (v === 't' ? 'true' : 'false') : v]))

async function createShape(table) {
  const { schema, pk, relfilenode } = await describe(table)
  const shape = { handle: `${Math.floor(Math.random() * 1e7)}-${Date.now()}${Math.floor(Math.random() * 1000)}`,
    table, schema, pk, relfilenode, chunks: [[]], log: [], rows: {} }
  const { rows } = await sql.query(`SELECT * FROM public.${table}`)
  let bytes = 0
  for (const r of rows) {
    const key = keyOf(shape, r)
    shape.rows[key] = r
    const line = JSON.stringify({ key, value: snapBool(shape, r), headers: { operation: 'insert', relation: ['public', table] } })
    shape.chunks[shape.chunks.length - 1].push(line)
    bytes += line.length + 1
    if (bytes >= CHUNK) { shape.chunks.push([]); bytes = 0 }
  }
  if (shape.chunks.length > 1 && shape.chunks[shape.chunks.length - 1].length === 0) shape.chunks.pop()
  shape.chunks[shape.chunks.length - 1].push(JSON.stringify({ headers: { control: 'snapshot-end', xmin: '1', xmax: '1', xip_list: [] } }))
  state.shapes[table] = shape
  persist()
  return shape
}

async function pollOnce() {
  let changed = false
  for (const shape of Object.values(state.shapes)) {
    const { rows: [rel] } = await sql.query('SELECT relfilenode FROM pg_class WHERE oid = to_regclass($1)', [`public.${shape.table}`])
    if (!rel || rel.relfilenode !== shape.relfilenode) { // TRUNCATE or drop: invalidate
      state.retired.push(shape.handle)
      delete state.shapes[shape.table]
      changed = true
      continue
    }
    const { rows } = await sql.query(`SELECT * FROM public.${shape.table}`)
    const now = {}
    for (const r of rows) now[keyOf(shape, r)] = r
    const entries = []
    for (const [key, r] of Object.entries(now)) {
      const old = shape.rows[key]
      if (!old) entries.push({ key, value: r, op: 'insert' })
      else {
        const diff = Object.fromEntries(Object.entries(r).filter(([c, v]) => old[c] !== v || shape.pk.includes(c)))
        if (Object.keys(diff).length > shape.pk.length) entries.push({ key, value: diff, op: 'update' })
      }
    }
    for (const [key, old] of Object.entries(shape.rows)) {
      if (!now[key]) entries.push({ key, value: Object.fromEntries(shape.pk.map((c) => [c, old[c]])), op: 'delete' })
    }
    if (entries.length === 0) continue
    const tx = ++state.lsn
    entries.forEach((e, i) => {
      const headers = { operation: e.op, relation: ['public', shape.table], lsn: String(tx), op_position: i * 2, txids: [tx] }
      if (i === entries.length - 1) headers.last = true
      shape.log.push({ tx, op: i * 2, line: JSON.stringify({ key: e.key, value: e.value, headers }) })
    })
    shape.rows = now
    changed = true
  }
  if (changed) { persist(); wake() }
}

let polling = true
;(async () => {
  while (polling) {
    try { await pollOnce() } catch (e) { console.error('poll failed', e.message) }
    await new Promise((r) => setTimeout(r, 25))
  }
})()

function parseOffset(s) {
  if (s === '-1') return { tx: -1, op: 0 }
  const m = /^(\d+)_(\d+|inf)$/.exec(s ?? '')
  return m ? { tx: Number(m[1]), op: m[2] === 'inf' ? Infinity : Number(m[2]) } : null
}
const fmt = (o) => (o.tx === -1 ? '-1' : `${o.tx}_${o.op === Infinity ? 'inf' : o.op}`)
const after = (e, o) => e.tx > o.tx || (e.tx === o.tx && e.op > o.op)

function send(res, status, headers, body) {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers })
  res.end(body)
}

async function handleShape(url, res) {
  const p = url.searchParams
  const table = p.get('table')
  const offset = parseOffset(p.get('offset'))
  const live = p.has('live') && p.get('live') !== 'false'
  if (!table || !offset) return send(res, 400, {}, '{"message":"Invalid request"}')
  let shape = state.shapes[table]
  if (offset.tx === -1) {
    shape ??= await createShape(table)
    const chunk = shape.chunks[0]
    return send(res, 200, { 'electric-handle': shape.handle, 'electric-offset': '0_0', 'electric-schema': JSON.stringify(shape.schema),
      'electric-has-data': 'true', etag: `"${shape.handle}:-1:0_0"` }, `[${chunk.join(',')}]`)
  }
  if (!shape || shape.handle !== p.get('handle')) {
    shape ??= await createShape(table)
    return send(res, 409, { 'electric-handle': shape.handle }, '[{"headers":{"control":"must-refetch"}}]')
  }
  const base = { 'electric-handle': shape.handle, 'electric-has-data': 'true' }
  if (live) base['electric-cursor'] = String(Math.floor(Date.now() / 1000))
  else base['electric-schema'] = JSON.stringify(shape.schema)
  if (offset.tx === 0 && offset.op < shape.chunks.length - 1) {
    const i = offset.op + 1
    return send(res, 200, { ...base, 'electric-offset': `0_${i}` }, `[${shape.chunks[i].join(',')}]`)
  }
  const deadline = Date.now() + LONG_POLL
  for (;;) {
    const current = state.shapes[table]
    if (current !== shape) {
      const next = current ?? await createShape(table)
      return send(res, 409, { 'electric-handle': next.handle }, '[{"headers":{"control":"must-refetch"}}]')
    }
    const entries = []
    let bytes = 0
    for (const e of shape.log) {
      if (!after(e, offset)) continue
      entries.push(e)
      bytes += e.line.length + 1
      if (bytes >= CHUNK) break
    }
    const latest = shape.log.length ? shape.log[shape.log.length - 1] : { tx: 0, op: Infinity }
    if (entries.length || !live || Date.now() >= deadline) {
      const end = entries.length ? entries[entries.length - 1] : (after(latest, offset) ? latest : offset)
      const upToDate = !after(latest, end)
      const lines = entries.map((e) => e.line)
      if (upToDate) lines.push(JSON.stringify({ headers: { control: 'up-to-date', global_last_seen_lsn: String(end.tx) } }))
      const h = { ...base, 'electric-offset': fmt(end) }
      if (upToDate) h['electric-up-to-date'] = ''
      if (!entries.length && live) h['electric-has-data'] = 'false'
      return send(res, 200, h, `[${lines.join(',')}]`)
    }
    await new Promise((resolve) => {
      const w = () => { waiters.delete(w); clearTimeout(timer); resolve() }
      const timer = setTimeout(w, Math.max(0, deadline - Date.now()))
      waiters.add(w)
    })
  }
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x')
  try {
    if (url.pathname === '/v1/health') return send(res, 200, {}, '{"status":"active"}')
    if (url.pathname === '/v1/shape' && req.method === 'GET') return await handleShape(url, res)
    send(res, 404, {}, 'Not found')
  } catch (e) {
    console.error(e)
    send(res, 503, { 'retry-after': '1' }, '{"message":"fake failed"}')
  }
})
server.listen(PORT, '127.0.0.1', () => console.log(`fake-ampere listening on ${PORT}`))
process.on('SIGTERM', () => { polling = false; persist(); process.exit(0) })
