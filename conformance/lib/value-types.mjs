// Fixtures of the value-encoding test: a table with one column per type, and rows of values.

// Every value below is sent to Postgres as text and parsed there by the column's type; the
// expected client value is derived from Postgres's own text output (not from these strings).

export const DDL = [
  `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très "bien"')`,
  `CREATE TABLE items (
     id int4 PRIMARY KEY,
     c_int2 int2, c_int4 int4, c_int8 int8, c_float4 float4, c_float8 float8, c_numeric numeric,
     c_bool bool, c_text text, c_varchar varchar(20), c_bpchar char(5), c_uuid uuid,
     c_json json, c_jsonb jsonb, c_date date, c_timestamp timestamp, c_timestamptz timestamptz,
     c_bytea bytea, c_int4_arr int4[], c_text_2d text[][], c_enum mood,
     c_interval interval, c_time time, c_int8_arr int8[], c_bool_arr bool[],
     c_required text NOT NULL
   )`,
]

export const COLUMNS = [
  'c_int2', 'c_int4', 'c_int8', 'c_float4', 'c_float8', 'c_numeric', 'c_bool', 'c_text', 'c_varchar',
  'c_bpchar', 'c_uuid', 'c_json', 'c_jsonb', 'c_date', 'c_timestamp', 'c_timestamptz', 'c_bytea',
  'c_int4_arr', 'c_text_2d', 'c_enum', 'c_interval', 'c_time', 'c_int8_arr', 'c_bool_arr', 'c_required',
]

export const VARIANTS = {
  typical: {
    c_int2: '12', c_int4: '-123456', c_int8: '1234567890123', c_float4: '1.5', c_float8: '3.141592653589793',
    c_numeric: '12345.6789', c_bool: 'true', c_text: 'hello world', c_varchar: 'vc', c_bpchar: 'ab',
    c_uuid: 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', c_json: '{"b": 1, "a": [1, 2.5, "x"], "n": null}',
    c_jsonb: '{"b": 1, "a": [1, 2.5, "x"], "n": null}', c_date: '2024-02-29',
    c_timestamp: '2024-02-29 13:14:15.123456', c_timestamptz: '2024-02-29 13:14:15.5+05:30',
    c_bytea: '\\x0001ff', c_int4_arr: '{1,NULL,3}', c_text_2d: '{{a,"b c"},{"d\\"e",NULL}}', c_enum: 'happy',
    c_interval: '1 day 02:03:04.5', c_time: '23:59:59.999999', c_int8_arr: '{9223372036854775807,-1}',
    c_bool_arr: '{t,f,NULL}', c_required: 'req',
  },
  extremes: {
    c_int2: '-32768', c_int4: '2147483647', c_int8: '-9223372036854775808', c_float4: 'NaN', c_float8: '-Infinity',
    c_numeric: '-0.000000000000000000001234567890123456789', c_bool: 'false', c_text: '', c_varchar: 'ünïcødé ✓',
    c_bpchar: 'abcde', c_uuid: '00000000-0000-0000-0000-000000000000', c_json: '[]', c_jsonb: '"just a string"',
    c_date: 'infinity', c_timestamp: '-infinity', c_timestamptz: '1999-12-31 23:59:59+00', c_bytea: '',
    c_int4_arr: '{}', c_text_2d: '{{"",NULL},{"NULL","x,y"}}', c_enum: 'très "bien"', c_interval: '-1 year -2 mons',
    c_time: '00:00', c_int8_arr: '{}', c_bool_arr: '{}', c_required: '',
  },
  tricky: {
    c_int2: '0', c_int4: '0', c_int8: '9007199254740993', c_float4: '3.4028235e+38', c_float8: '1e-300',
    c_numeric: 'NaN', c_bool: 'true', c_text: 'quote " apostrophe \' backslash \\ newline \n tab \t emoji 😀 NULL',
    c_varchar: 'NULL', c_bpchar: 'a b', c_uuid: 'ffffffff-FFFF-4fff-8FFF-ffffffffffff',
    c_json: '{"u": "\\u00e9\\ud83d\\ude00", "nested": {"deep": [true, false, null]}, "big": 12345678901234567890}',
    c_jsonb: '{"u": "\\u00e9", "arr": [{"k": "v"}], "num": 1.0e2}', c_date: '0044-03-15 BC',
    c_timestamp: '2262-04-11 23:47:16.854775', c_timestamptz: '2000-01-01 00:00:00.000001+00', c_bytea: '\\xdeadbeef',
    c_int4_arr: '{-2147483648,0,2147483647}', c_text_2d: '{{"a\\\\b","{x}"},{"q\\"uote"," sp "}}', c_enum: 'sad',
    c_interval: 'P1Y2M3DT4H5M6.789S', c_time: '12:00:00.5', c_int8_arr: '{NULL,-9223372036854775808}',
    c_bool_arr: '{{t,t},{f,NULL}}', c_required: 'x',
  },
  nulls: Object.fromEntries(COLUMNS.map((c) => [c, c === 'c_required' ? 'only this is set' : null])),
}

export async function insertRow(sql, id, variant) {
  const v = VARIANTS[variant]
  const cols = ['id', ...COLUMNS]
  const params = [String(id), ...COLUMNS.map((c) => v[c])]
  await sql.query(`INSERT INTO items (${cols.join(', ')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(', ')})`, params)
}

export async function updateRow(sql, id, variant, columns) {
  const v = VARIANTS[variant]
  const sets = columns.map((c, i) => `${c} = $${i + 2}`).join(', ')
  await sql.query(`UPDATE items SET ${sets} WHERE id = $1`, [String(id), ...columns.map((c) => v[c])])
}

export const VARIANT_IDS = { typical: 1, extremes: 2, tricky: 3, nulls: 4 }
