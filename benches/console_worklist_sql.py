"""`python3 benches/console_worklist_sql.py` (standard library only).
Worklist SQL, before and after (issue 21): a link worker's default view (mine and
unassigned), first page of 26 and the per-stage counts, on 100,000 referrals made as
benches/console.rs makes them, in a database built from migrations/sqlite/*.sql."""
import glob, os, sqlite3, tempfile, time
db = os.path.join(tempfile.mkdtemp(), "worklist.db")
if os.path.exists(db): os.remove(db)
c = sqlite3.connect(db)
for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "migrations", "sqlite", "*.sql"))):
    c.executescript(open(f).read())
N = 100_000
stages = ("CASE n % 10 WHEN 0 THEN 'received' WHEN 1 THEN 'accepted' WHEN 2 THEN 'contacted' "
  "WHEN 3 THEN 'assessment-done' WHEN 4 THEN 'plan-agreed' WHEN 5 THEN 'in-support' "
  "WHEN 6 THEN 'completed' WHEN 7 THEN 'declined' WHEN 8 THEN 'unable-to-contact' ELSE 'withdrawn' END")
c.execute(f"""WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {N})
 INSERT INTO referrals (id, identifier_system, identifier_value, stage, fhir_status, received_at,
   updated_at, received_as, practice_ods_code, practice_name, task_id, version, assigned_to)
 SELECT 'bench-' || n, 'urn:bench', n, {stages}, 'active',
   strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + n * 60, 'unixepoch'),
   strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + n * 60, 'unixepoch'), 'resource',
   'K8' || (n % 50), 'Practice ' || (n % 50), 'task-' || n, 1,
   CASE n % 3 WHEN 0 THEN NULL WHEN 1 THEN 'amara' ELSE 'ben' END FROM seq""")
c.execute(f"""WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {N})
 INSERT INTO referral_patients (referral_id, nhs_number, given_name, family_name, birth_date)
 SELECT 'bench-' || n, printf('8%09d', n), 'Given', 'Family' || n, '1970-01-01' FROM seq""")
c.commit(); c.execute("ANALYZE"); c.commit()
COLS = ("r.id, r.identifier_system, r.identifier_value, r.stage, r.fhir_status, r.intent, r.priority, "
  "r.authored_on, r.received_at, r.updated_at, r.received_as, r.practice_ods_code, r.practice_name, "
  "r.referrer_name, r.referrer_identifier, r.consent_status, r.consent_date, r.reply_to, r.patient_id, "
  "r.task_id, r.version, r.assigned_to, p.nhs_number, p.given_name, p.family_name, p.birth_date, "
  "p.phone, p.email, p.address, p.postcode")
BASE = f"SELECT {COLS} FROM referrals r LEFT JOIN referral_patients p ON p.referral_id = r.id WHERE 1 = 1"
before_list = BASE + " AND (r.assigned_to = ?1 OR r.assigned_to IS NULL) ORDER BY r.received_at, r.id LIMIT ?2"
after_list = (f"SELECT * FROM ({BASE} AND r.assigned_to = ?1 ORDER BY r.received_at, r.id LIMIT ?2) AS mine "
  f"UNION ALL SELECT * FROM ({BASE} AND r.assigned_to IS NULL ORDER BY r.received_at, r.id LIMIT ?2) AS unassigned "
  "ORDER BY received_at, id LIMIT ?2")
before_counts = "SELECT stage, COUNT(*) AS n FROM referrals WHERE (assigned_to = ?1 OR assigned_to IS NULL) GROUP BY stage"
after_counts = ("SELECT stage, COUNT(*) AS n FROM (SELECT stage FROM referrals WHERE assigned_to = ?1 "
  "UNION ALL SELECT stage FROM referrals WHERE assigned_to IS NULL) AS open GROUP BY stage")
def run(sql, args, n=200):
    times = []
    for _ in range(n):
        t = time.perf_counter(); rows = c.execute(sql, args).fetchall(); times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times)//2]*1000, times[int(round((len(times)-1)*0.99))]*1000, rows
assert run(before_list, ("amara", 26), 1)[2] == run(after_list, ("amara", 26), 1)[2], "same page"
assert sorted(run(before_counts, ("amara",), 1)[2]) == sorted(run(after_counts, ("amara",), 1)[2]), "same counts"
print(f"sqlite {sqlite3.sqlite_version}, {N} referrals (a third each amara, ben, unassigned)")
print("| query | p50 | p99 |\n|---|---|---|")
for name, sql, args in [("page, before (OR)", before_list, ("amara", 26)),
                        ("page, after (UNION ALL)", after_list, ("amara", 26)),
                        ("counts, before (OR)", before_counts, ("amara",)),
                        ("counts, after (UNION ALL)", after_counts, ("amara",))]:
    p50, p99, _ = run(sql, args)
    print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms |")
for sql in (before_list, after_list, before_counts, after_counts):
    print([r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, ("amara", 26) if "?2" in sql else ("amara",))])
# The OR's bad case: a link worker with a few referrals, late in time order, and none
# unassigned left (the ordered scan reads every row before it fills a page).
c.execute("UPDATE referrals SET assigned_to = 'ben' WHERE assigned_to IS NULL")
c.execute("UPDATE referrals SET assigned_to = 'zoe' WHERE id IN ('bench-99990', 'bench-99995', 'bench-100000')")
c.commit(); c.execute("ANALYZE"); c.commit()
assert run(before_list, ("zoe", 26), 1)[2] == run(after_list, ("zoe", 26), 1)[2], "same page"
print("\nA sparse caseload (3 of 100,000, none unassigned):\n| query | p50 | p99 |\n|---|---|---|")
for name, sql, args in [("page, before (OR)", before_list, ("zoe", 26)),
                        ("page, after (UNION ALL)", after_list, ("zoe", 26)),
                        ("counts, before (OR)", before_counts, ("zoe",)),
                        ("counts, after (UNION ALL)", after_counts, ("zoe",))]:
    p50, p99, _ = run(sql, args, 50)
    print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms |")
