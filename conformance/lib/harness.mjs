// Test harness for the ampere conformance suite.
//
// Everything here is started by this process and stopped by PID: a throwaway Postgres cluster
// (initdb + postgres, run as the `postgres` OS user when we are root) and the ampere binary.
// Every wait is bounded. Temp dirs are removed at the end (and on process exit).

import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'

const here = path.dirname(fileURLToPath(import.meta.url))
export const CONFORMANCE_DIR = path.resolve(here, '..')
export const REPO_DIR = path.resolve(CONFORMANCE_DIR, '..')

// ---------------------------------------------------------------------------------------------
// Process and temp-dir bookkeeping: kill only what we started, by PID; remove only our dirs.

const livePids = new Set()
const liveDirs = new Set()

function cleanupSync() {
  for (const pid of livePids) {
    try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
  }
  livePids.clear()
  for (const dir of liveDirs) {
    try { fs.rmSync(dir, { recursive: true, force: true }) } catch { /* ignore */ }
  }
  liveDirs.clear()
}
process.on('exit', cleanupSync)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => { cleanupSync(); process.exit(128 + os.constants.signals[sig]) })
}

function makeTempDir(prefix) {
  // short path under /tmp: the Postgres socket path must stay under 107 bytes
  const dir = fs.mkdtempSync(path.join('/tmp', prefix))
  liveDirs.add(dir)
  return dir
}

function removeDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true })
  liveDirs.delete(dir)
}

/** Waits for a child to exit, at most `ms`. Resolves to {code, signal} or null on timeout. */
function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => { child.off('exit', onExit); resolve(null) }, ms)
    const onExit = (code, signal) => { clearTimeout(timer); resolve({ code, signal }) }
    child.once('exit', onExit)
  })
}

export function tailFile(file, lines = 40) {
  try {
    const text = fs.readFileSync(file, 'utf8')
    return text.split('\n').slice(-lines).join('\n')
  } catch {
    return `(no ${file})`
  }
}

/** A TCP port that nothing listens on right now (racy; callers retry on bind failure). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Postgres

export function pgBinDir() {
  if (process.env.PG_BIN) return process.env.PG_BIN
  const base = '/usr/lib/postgresql'
  let versions = []
  try { versions = fs.readdirSync(base).filter((v) => fs.existsSync(path.join(base, v, 'bin', 'initdb'))) } catch { /* none */ }
  versions.sort((a, b) => Number(a) - Number(b))
  if (versions.length === 0) {
    throw new Error('no PostgreSQL server binaries: install postgresql-15 or set PG_BIN')
  }
  return path.join(base, versions[versions.length - 1], 'bin')
}

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0

function postgresIds() {
  const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim())
  const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim())
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid <= 0) {
    throw new Error('running as root but there is no `postgres` OS user to run the server as')
  }
  return { uid, gid }
}

/** argv that runs `cmd args` as the postgres OS user when we are root (setpriv execs: same PID). */
function asPostgres(cmd, args) {
  if (!isRoot) return [cmd, args]
  return ['setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', '--', cmd, ...args]]
}

/** Session settings under which Postgres's text output is what ampere must send (protocol.md 5.4). */
export const TEXT_OUTPUT_SETTINGS = [
  "SET DateStyle = 'ISO, DMY'",
  "SET TimeZone = 'UTC'",
  'SET extra_float_digits = 1',
  "SET bytea_output = 'hex'",
  "SET IntervalStyle = 'iso_8601'",
]

/**
 * Connects a `pg` client that returns every value as Postgres's raw text output (no parsing),
 * with the session settings of protocol.md 5.4.
 */
export async function connectSql(url) {
  const client = new pg.Client({
    connectionString: url,
    types: { getTypeParser: () => (v) => v },
    connectionTimeoutMillis: 10_000,
    query_timeout: 60_000,
  })
  await client.connect()
  for (const s of TEXT_OUTPUT_SETTINGS) await client.query(s)
  return client
}

/**
 * Starts a throwaway cluster with wal_level=logical (testing.md §1). Returns
 * { url, port, dir, logFile, stop() }.
 */
export async function startPostgres() {
  const bin = pgBinDir()
  const dir = makeTempDir('pgconf.')
  const data = path.join(dir, 'data')
  if (isRoot) {
    const { uid, gid } = postgresIds()
    fs.chownSync(dir, uid, gid)
  }
  const [icmd, iargs] = asPostgres(path.join(bin, 'initdb'), [
    '-D', data, '-U', 'postgres', '--auth=trust', '--no-locale', '-E', 'UTF8', '--no-sync',
  ])
  const init = spawnSync(icmd, iargs, { cwd: '/', encoding: 'utf8', timeout: 60_000 })
  if (init.status !== 0) {
    removeDir(dir)
    throw new Error(`initdb failed (${init.status}): ${init.stderr || init.stdout || init.error}`)
  }
  fs.appendFileSync(path.join(data, 'postgresql.conf'), [
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${dir}'`,
    'wal_level = logical',
    'max_replication_slots = 20',
    'max_wal_senders = 20',
    'max_connections = 200',
    'fsync = off',
    'full_page_writes = off',
    // synchronous_commit stays on: with it off, logical decoding sees commits up to ~200 ms late
    '',
  ].join('\n'))

  const logFile = path.join(dir, 'server.log')
  let lastErr
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort()
    const logFd = fs.openSync(logFile, 'a')
    if (isRoot) { const { uid, gid } = postgresIds(); fs.fchownSync(logFd, uid, gid) }
    const [cmd, args] = asPostgres(path.join(bin, 'postgres'), ['-D', data, '-p', String(port)])
    const child = spawn(cmd, args, { cwd: '/', stdio: ['ignore', logFd, logFd] })
    fs.closeSync(logFd)
    livePids.add(child.pid)
    const url = `postgresql://postgres@127.0.0.1:${port}/postgres`
    const deadline = Date.now() + 30_000
    let ready = false
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break
      try {
        const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 })
        await c.connect()
        await c.end()
        ready = true
        break
      } catch (e) {
        lastErr = e
        await sleep(50)
      }
    }
    if (ready) {
      const stop = async () => {
        if (child.exitCode === null && child.signalCode === null) {
          try { process.kill(child.pid, 'SIGINT') } catch { /* gone */ } // fast shutdown
          if (!(await waitExit(child, 15_000))) {
            try { process.kill(child.pid, 'SIGKILL') } catch { /* gone */ }
            await waitExit(child, 5_000)
          }
        }
        livePids.delete(child.pid)
        removeDir(dir)
      }
      return { url, port, dir, logFile, stop }
    }
    // did not come up: most likely the port got taken; stop it and retry on another port
    if (child.exitCode === null && child.signalCode === null) {
      try { process.kill(child.pid, 'SIGKILL') } catch { /* gone */ }
      await waitExit(child, 5_000)
    }
    livePids.delete(child.pid)
  }
  const log = tailFile(logFile)
  removeDir(dir)
  throw new Error(`postgres did not start: ${lastErr?.message}\n${log}`)
}

// ---------------------------------------------------------------------------------------------
// ampere

export function ampereBin() {
  if (process.env.AMPERE_BIN) return path.resolve(process.env.AMPERE_BIN)
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO_DIR, process.env.CARGO_TARGET_DIR)
    : path.join(REPO_DIR, 'target')
  return path.join(target, 'release', 'ampere')
}

/**
 * An ampere server bound to one port, storage dir and database. `start()` may be called again
 * after `stop()`/`kill()` (restart on the same port, storage and DB).
 */
export class Ampere {
  constructor({ databaseUrl, port, storageDir, chunkBytes, longPollMs, extraEnv = {} }) {
    this.bin = ampereBin()
    this.databaseUrl = databaseUrl
    this.port = port
    this.storageDir = storageDir
    this.chunkBytes = chunkBytes
    this.longPollMs = longPollMs
    this.extraEnv = extraEnv
    this.logFile = path.join(path.dirname(storageDir), 'ampere.log')
    this.child = null
    this.starts = 0
  }

  get baseUrl() { return `http://127.0.0.1:${this.port}` }
  get shapeUrl() { return `${this.baseUrl}/v1/shape` }

  async start({ readyTimeoutMs = Number(process.env.AMPERE_READY_TIMEOUT_MS ?? 30_000) } = {}) {
    if (!fs.existsSync(this.bin)) {
      throw new Error(`ampere binary not found at ${this.bin}: build it with ` +
        '`cargo build --release -p ampere-server` or set AMPERE_BIN')
    }
    const env = {
      ...process.env,
      DATABASE_URL: this.databaseUrl,
      ELECTRIC_PORT: String(this.port),
      ELECTRIC_STORAGE_DIR: this.storageDir,
      ELECTRIC_INSECURE: 'true',
      ELECTRIC_LOG_LEVEL: process.env.AMPERE_LOG_LEVEL ?? 'info',
      ...this.extraEnv,
    }
    if (this.chunkBytes !== undefined) env.ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD = String(this.chunkBytes)
    if (this.longPollMs !== undefined) env.ELECTRIC_LONG_POLL_TIMEOUT = String(this.longPollMs)
    this.starts += 1
    fs.appendFileSync(this.logFile, `\n===== start #${this.starts} at ${new Date().toISOString()} =====\n`)
    const logFd = fs.openSync(this.logFile, 'a')
    const child = spawn(this.bin, [], { cwd: REPO_DIR, env, stdio: ['ignore', logFd, logFd] })
    fs.closeSync(logFd)
    this.child = child
    livePids.add(child.pid)
    child.once('exit', () => livePids.delete(child.pid))
    await this.waitHealthy(readyTimeoutMs)
  }

  async waitHealthy(timeoutMs) {
    const deadline = Date.now() + timeoutMs
    let last = 'no answer'
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`ampere exited before becoming healthy (code ${this.child.exitCode}, ` +
          `signal ${this.child.signalCode})\n${this.logTail()}`)
      }
      try {
        const res = await fetch(`${this.baseUrl}/v1/health`, { signal: AbortSignal.timeout(2000) })
        const body = await res.text()
        last = `${res.status} ${body}`
        if (res.status === 200 && JSON.parse(body).status === 'active') return
      } catch (e) {
        last = e.cause?.code ?? e.message
      }
      await sleep(100)
    }
    throw new Error(`ampere not healthy within ${timeoutMs} ms (last: ${last})\n${this.logTail()}`)
  }

  /** Sends `signal` to the ampere process and waits for it to exit. Returns {code, signal}. */
  async stop(signal = 'SIGTERM', timeoutMs = 15_000) {
    const child = this.child
    if (!child) return null
    if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode }
    process.kill(child.pid, signal)
    const res = await waitExit(child, timeoutMs)
    if (res) return res
    process.kill(child.pid, 'SIGKILL')
    await waitExit(child, 5_000)
    throw new Error(`ampere did not exit within ${timeoutMs} ms of ${signal}`)
  }

  /** Panics and ERROR/WARN lines of the log (up to 20), then its last lines. */
  logTail(lines = 40) {
    let notable = ''
    try {
      const hits = fs.readFileSync(this.logFile, 'utf8').split('\n')
        .filter((l) => /panicked|\bERROR\b|\bWARN\b|^===== start/.test(l))
      notable = hits.slice(0, 20).map((l) => l.slice(0, 600)).join('\n')
    } catch { /* no log */ }
    return `--- ampere log (${this.logFile}): panics, errors, warnings ---\n${notable}\n` +
      `--- ampere log: last ${lines} lines ---\n${tailFile(this.logFile, lines)}`
  }
}

// ---------------------------------------------------------------------------------------------
// One isolated environment per test: its own cluster, storage dir and ampere.

/**
 * Runs `body(env)` with a fresh Postgres cluster, an SQL client and an ampere configuration.
 * `setup(sql)` runs before ampere starts (create tables, load rows). ampere is started unless
 * `startAmpere: false`. On failure the ampere and Postgres log tails are appended to the error.
 */
export async function withEnv(opts, body) {
  const { setup, chunkBytes, longPollMs = 5000, startAmpere = true, extraEnv } = opts
  const pgsrv = await startPostgres()
  const work = makeTempDir('ampconf.')
  let sql
  let ampere
  try {
    sql = await connectSql(pgsrv.url)
    if (setup) await setup(sql)
    ampere = new Ampere({
      databaseUrl: pgsrv.url,
      port: await freePort(),
      storageDir: path.join(work, 'storage'),
      chunkBytes,
      longPollMs,
      extraEnv,
    })
    fs.mkdirSync(ampere.storageDir, { recursive: true })
    if (startAmpere) await ampere.start()
    await body({ sql, ampere, pg: pgsrv })
  } catch (e) {
    if (ampere?.starts > 0 && !String(e?.message).includes('--- ampere log')) {
      e.message = `${e.message}\n${ampere.logTail()}`
    }
    if (process.env.CONFORMANCE_PG_LOG) {
      e.message = `${e.message}\n--- postgres log ---\n${tailFile(pgsrv.logFile)}`
    }
    throw e
  } finally {
    if (ampere) { try { await ampere.stop('SIGTERM', 10_000) } catch { /* killed */ } }
    if (sql) { try { await sql.end() } catch { /* ignore */ } }
    if (process.env.CONFORMANCE_KEEP_LOGS && ampere) {
      const keep = path.join(process.env.CONFORMANCE_KEEP_LOGS, `ampere-${process.pid}-${Date.now()}.log`)
      try { fs.mkdirSync(path.dirname(keep), { recursive: true }); fs.copyFileSync(ampere.logFile, keep) } catch { /* ignore */ }
    }
    removeDir(work)
    await pgsrv.stop()
  }
}
