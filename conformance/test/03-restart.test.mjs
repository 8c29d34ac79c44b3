import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { withEnv } from '../lib/harness.mjs'
import { openStream, assertRowsMatchTable, waitRowsMatchTable } from '../lib/client.mjs'
import { ITEMS_DDL, itemsInsertRange } from '../lib/tables.mjs'

const key = (id) => `"public"."items"/"${id}"`

/** Writes made while ampere is down: several transactions of inserts, updates and deletes. */
async function writeWhileDown(sql) {
  for (let i = 0; i < 10; i++) {
    await sql.query(`INSERT INTO items (id, title, n) VALUES (${20000 + i}, 'while down ${i}', ${i})`)
  }
  await sql.query(`UPDATE items SET title = title || ' (edited while down)', n = -n WHERE id BETWEEN 1 AND 5`)
  await sql.query(`DELETE FROM items WHERE id BETWEEN 6 AND 8`)
  await sql.query(`BEGIN;
    INSERT INTO items (id, title) VALUES (20100, 'tx while down');
    UPDATE items SET title = 'changed twice' WHERE id = 20000;
    DELETE FROM items WHERE id = 20001;
    COMMIT;`)
  await sql.query(itemsInsertRange(30000, 30999)) // a larger transaction: spans several chunks
}

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`after ${signal} and a restart on the same storage and database the live client continues with no 409, no loss and no duplicate`, { timeout: 180_000 }, async (t) => {
    await withEnv({
      chunkBytes: 20_000,
      longPollMs: 5000,
      setup: async (sql) => {
        await sql.query(ITEMS_DDL)
        await sql.query(itemsInsertRange(1, 500))
      },
    }, async ({ sql, ampere }) => {
      const h = openStream(ampere.shapeUrl)
      try {
        await h.mirror.waitUntil(() => h.mirror.upToDate > 0, 30_000, 'initial up-to-date', h.diag)
        await assertRowsMatchTable(sql, h.mirror.rows, 'after initial sync')
        await sleep(200)
        await sql.query(`INSERT INTO items (id, title) VALUES (10001, 'live before restart')`)
        await h.mirror.waitUntil(() => h.mirror.rows.has(key(10001)), 5000, 'a live insert before the restart', h.diag)
        const handle = h.stream.shapeHandle
        assert.ok(handle, 'the stream has a handle')

        const exit = await ampere.stop(signal)
        t.diagnostic(`ampere exit after ${signal}: ${JSON.stringify(exit)}`)
        if (signal === 'SIGTERM') {
          assert.ok(exit.code === 0 || exit.signal === 'SIGTERM', `ampere exit after SIGTERM: ${JSON.stringify(exit)}`)
        }

        await writeWhileDown(sql)
        await sleep(500) // the client keeps retrying against a closed port meanwhile
        await ampere.start()

        await waitRowsMatchTable(sql, h, 30_000, 'the writes made while ampere was down')
        // and live keeps working after the restart
        await sql.query(`INSERT INTO items (id, title) VALUES (10002, 'live after restart')`)
        await sql.query(`UPDATE items SET title = 'updated after restart' WHERE id = 20002`)
        await h.mirror.waitUntil(() => h.mirror.rows.get(key(20002))?.title === 'updated after restart',
          5000, 'a live update after the restart', h.diag)
        await assertRowsMatchTable(sql, h.mirror.rows, 'after the restart')

        assert.deepEqual(h.mirror.violations, [], 'no duplicate inserts, no changes for absent rows')
        assert.equal(h.mirror.mustRefetch, 0, 'no must-refetch reached the subscriber')
        assert.equal(h.mirror.errors.length, 0, 'no client errors')
        const statuses = h.log.map((e) => e.status ?? e.error)
        assert.ok(!statuses.includes(409), `no 409 responses: ${h.diag()}`)
        assert.ok(h.log.some((e) => e.error), 'the client did see ampere go away (network errors while down)')
        const handles = new Set(h.log.filter((e) => e.status === 200).map((e) => e.headers['electric-handle']))
        assert.deepEqual([...handles], [handle], 'the shape handle survived the restart')
        assert.equal(h.stream.shapeHandle, handle)

        // a fresh client after the restart gets the same shape and the same rows
        const fresh = openStream(ampere.shapeUrl)
        try {
          await fresh.mirror.waitUntil(() => fresh.mirror.upToDate > 0, 30_000, 'a fresh client after the restart', fresh.diag)
          assert.equal(fresh.log[0].headers['electric-handle'], handle, 'a fresh client gets the persisted handle')
          await assertRowsMatchTable(sql, fresh.mirror.rows, 'fresh client after the restart')
          assert.deepEqual(fresh.mirror.violations, [])
        } finally {
          fresh.close()
        }
      } finally {
        h.close()
      }
    })
  })
}
