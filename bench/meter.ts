/**
 * What the gateway costs PostgreSQL: transactions committed in the bench database and the WAL
 * written for it, between two readings.
 *
 * The machine's PostgreSQL is shared with other work, so nothing here may count another
 * database's activity:
 * - commits: `pg_stat_database.xact_commit` of the bench database only. Backends publish their
 *   counters lazily (at most once a second while busy, within 10 s once idle), so a reading is
 *   only complete after `SETTLE_MS` without our load; the meter's own queries run in the bench
 *   database too and are subtracted exactly (one commit each).
 * - WAL: `pg_current_wal_lsn()` is server-wide. With pg_walinspect (contrib, superuser) the
 *   records between two readings are attributed to the bench database: every record touching
 *   one of its blocks, and every record (commits included) of a transaction that did; each
 *   counted at its aligned size in the WAL stream. Without the extension only the server-wide
 *   difference is available, and the figure says so. The shared server checkpoints often (other
 *   work creates and drops databases) and recycles WAL within seconds, so the meter holds a
 *   temporary physical replication slot (gone with its session, even on a crash) that keeps the
 *   WAL from the last reading on, and moves it forward after each window.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { sleep } from './lib.js';

/** Longer than PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s): every backend has flushed its counters. */
export const SETTLE_MS = 11_000;

export interface Reading {
  at: number;
  commits: number;
  lsn: string;
  /** Meter queries (commits in the bench database) issued up to and including this reading. */
  own: number;
}

export interface WalShare {
  /** Aligned bytes of the records attributed to the bench database; null without pg_walinspect. */
  bytes: number | null;
  records: number | null;
  fpiBytes: number | null;
  /** Bytes per table (and index) of the bench database, largest first. */
  byRelation: { relation: string; bytes: number; records: number }[];
  byType: { type: string; bytes: number; records: number }[];
  /** The server-wide difference: every database's WAL, checkpoints and all. */
  serverBytes: number;
}

export interface Window {
  seconds: number;
  /** Commits in the bench database, less the meter's own. */
  commits: number;
  wal: WalShare;
}

export class Meter {
  private own = 0;

  private constructor(
    private readonly client: pg.Client,
    readonly dbName: string,
    private readonly dbOid: number,
    /** Why WAL cannot be attributed (null when it can). */
    readonly walUnattributed: string | null,
    private readonly slot: string | null,
  ) {}

  static async open(url: string, dbName: string): Promise<Meter> {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    let why: string | null = null;
    let slot: string | null = `switchyard_bench_${randomBytes(4).toString('hex')}`;
    try {
      await client.query('create extension if not exists pg_walinspect');
      await client.query('select pg_create_physical_replication_slot($1, true, true)', [slot]);
    } catch (err) {
      why = `pg_walinspect or a temporary replication slot unavailable (${(err as Error).message})`;
      slot = null;
    }
    const oid = await client.query<{ oid: number }>('select oid::int as oid from pg_database where datname = current_database()');
    return new Meter(client, dbName, oid.rows[0]!.oid, why, slot);
  }

  private async query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    this.own++;
    return this.client.query<R>(text, values);
  }

  /** The counters now; call after SETTLE_MS without load for a complete reading. */
  async read(): Promise<Reading> {
    const r = await this.query<{ commits: string; lsn: string }>(
      `select (select xact_commit from pg_stat_database where datname = current_database())::text as commits,
              pg_current_wal_insert_lsn()::text as lsn`,
    );
    return { at: performance.now(), commits: Number(r.rows[0]!.commits), lsn: r.rows[0]!.lsn, own: this.own };
  }

  /** Waits SETTLE_MS, then reads. */
  async settleAndRead(): Promise<Reading> {
    await sleep(SETTLE_MS);
    return this.read();
  }

  /** Commits and WAL between two readings (`b` taken after a settle). */
  async between(a: Reading, b: Reading): Promise<Window> {
    // The meter's queries from `a` (itself included) up to `b` (excluded) are commits in this database.
    const commits = b.commits - a.commits - (b.own - a.own);
    const server = await this.query<{ bytes: string }>('select pg_wal_lsn_diff($2::pg_lsn, $1::pg_lsn)::text as bytes', [a.lsn, b.lsn]);
    const wal: WalShare = { bytes: null, records: null, fpiBytes: null, byRelation: [], byType: [], serverBytes: Number(server.rows[0]!.bytes) };
    if (!this.walUnattributed) {
      Object.assign(wal, await this.attribute(a.lsn, b.lsn));
      // Keep only what the next window (from `b`) needs.
      await this.query('select pg_replication_slot_advance($1, $2::pg_lsn)', [this.slot, b.lsn]);
    }
    return { seconds: (b.at - a.at) / 1000, commits, wal };
  }

  private async attribute(from: string, to: string): Promise<Partial<WalShare>> {
    // Records are read up to `to`, which precedes the flush position once our commits are durable.
    const q = await this.query<{ bytes: string | null; records: string; fpi: string | null; by_rel: WalShare['byRelation'] | null; by_type: WalShare['byType'] | null }>(`
      with rec as (
        select xid, resource_manager || '/' || record_type as type, (record_length + 7) / 8 * 8 as bytes, fpi_length,
               (regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)'))[1]::oid as db, (regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)'))[2]::oid as node
          from pg_get_wal_records_info($1::pg_lsn, least($2::pg_lsn, pg_current_wal_flush_lsn()))
      ),
      ours as (
        select * from rec
         where db = $3 or (xid <> '0'::xid and xid in (select xid from rec where db = $3 and xid <> '0'::xid))
      ),
      by_rel as (
        select coalesce(pg_filenode_relation(0, node)::text, case when node is null then '(no block: commit, …)' else 'filenode ' || node end) as relation,
               sum(bytes)::bigint as bytes, count(*)::int as records
          from ours group by 1 order by 2 desc limit 12
      ),
      by_type as (select type, sum(bytes)::bigint as bytes, count(*)::int as records from ours group by 1 order by 2 desc limit 12)
      select (select sum(bytes) from ours)::text as bytes, (select count(*) from ours)::text as records,
             (select sum(fpi_length) from ours)::text as fpi,
             (select json_agg(by_rel) from by_rel) as by_rel, (select json_agg(by_type) from by_type) as by_type`, [from, to, this.dbOid]);
    const r = q.rows[0]!;
    return {
      bytes: Number(r.bytes ?? 0), records: Number(r.records), fpiBytes: Number(r.fpi ?? 0),
      byRelation: (r.by_rel ?? []).map((x) => ({ ...x, bytes: Number(x.bytes) })),
      byType: (r.by_type ?? []).map((x) => ({ ...x, bytes: Number(x.bytes) })),
    };
  }

  async close(): Promise<void> {
    // Ending the session drops the temporary slot.
    await this.client.end();
  }
}
