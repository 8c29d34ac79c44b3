// Table definitions shared by the tests and the benchmark.

/** `items`: the table every shape test syncs. */
export const ITEMS_DDL = `
  CREATE TABLE items (
    id int4 PRIMARY KEY,
    title text NOT NULL,
    n int8,
    done bool,
    score float8,
    created_at timestamptz,
    tags text[]
  )`

/** Inserts rows first..last with deterministic, varied values (one statement). */
export function itemsInsertRange(first, last) {
  return `
    INSERT INTO items (id, title, n, done, score, created_at, tags)
    SELECT g,
           'item ' || g || CASE WHEN g % 7 = 0 THEN ' "quoted" / slash \\ back' ELSE '' END,
           CASE WHEN g % 11 = 0 THEN NULL ELSE g::int8 * 1000000007 END,
           CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 = 0 END,
           CASE WHEN g % 13 = 0 THEN NULL ELSE g / 3.0 END,
           timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute 1.5 second',
           CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['t' || g, 'x,y', NULL] END
      FROM generate_series(${first}, ${last}) AS g`
}
