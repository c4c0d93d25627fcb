//! The referral record in SQL, shared by both backends: compiled into `store::sqlite` and
//! `store::postgres` alike (`#[path]`), each time with that backend's `Db`,
//! `Conn` and `DbRow`, so the SQL text exists once.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::{Backend, Conn, Tx};
use crate::referral::record::{
    BusinessIdentifier, Note, NoteSource, Outcome, PatientContact, Reason, ReceivedAs, Referral,
    ReferralDetail, ReferralFields, StageChange,
};
use crate::referral::stage::Stage;
use crate::store::StoreError;
use crate::store::deferred::{Guard, IntoArg, Statement};
use crate::store::referrals::{
    Assignee, MessageRequest, NewStageChange, OutboxMessage, PersonSearch, ReferralFilter,
    ReferralHandle, Submission,
};
use crate::store::search::{BoundValue, SearchStatement};

const REFERRAL_COLUMNS: &str = "r.id, r.identifier_system, r.identifier_value, r.stage, r.fhir_status, \
     r.intent, r.priority, r.authored_on, r.received_at, r.updated_at, r.received_as, \
     r.practice_ods_code, r.practice_name, r.referrer_name, r.referrer_identifier, \
     r.consent_status, r.consent_date, r.reply_to, r.patient_id, r.task_id, r.version, r.assigned_to, \
     p.nhs_number, p.given_name, p.family_name, p.birth_date, p.phone, p.email, p.address, p.postcode";

impl Tx {
    /// The referral `practice` sent with this business identifier, if one was received.
    pub(in crate::store) async fn referral_by_identifier(
        &mut self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<Option<Referral>, StoreError> {
        self.lock_business_identifier(practice, identifier).await?;
        // Most lookups inside a write find nothing (a new referral): the id alone is
        // read, in the way that costs the writer least (SQLite: on its handle).
        let id = self
            .read_text(referral_id_by_identifier(practice, identifier))
            .await?;
        match id {
            Some(id) => fetch_referral(self.read_conn().await?, &id).await,
            None => Ok(None),
        }
    }

    /// See `WriteTx::claim_identifier`.
    pub(in crate::store) async fn claim_identifier(
        &mut self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<(), StoreError> {
        self.lock_business_identifier(practice, identifier).await?;
        self.fail_if_found(
            Guard::Identifier,
            referral_id_by_identifier(practice, identifier),
        )
        .await
    }

    /// Locks `identifier` as `practice` sent it until this transaction ends: a second
    /// transaction receiving the same referral (another instance) waits here, then
    /// finds this one's referral (`referral_by_identifier`, `claim_identifier`) and is
    /// answered as a resubmission, never with a unique violation.
    async fn lock_business_identifier(
        &mut self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<(), StoreError> {
        let scope = format!("{}|{}", practice.unwrap_or_default(), identifier.system);
        self.lock_identifier(&scope, &identifier.value).await
    }

    /// The referral, read inside this transaction (to change it).
    pub(in crate::store) async fn referral(
        &mut self,
        id: &str,
    ) -> Result<Option<Referral>, StoreError> {
        // A write reads a referral to change it (a transition judges the move from its
        // stage): locked first (PostgreSQL: its row until the transaction ends; a no-op
        // on SQLite's single writer), so the record it decides from is still the
        // referral's when it writes. Read unlocked, two instances' transitions could
        // both judge from the stage the first was about to leave.
        self.lock_referral(id).await?;
        fetch_referral(self.read_conn().await?, id).await
    }

    /// Records a new referral, with its patient, reasons and GP notes, and
    /// the `received` stage.
    pub(in crate::store) async fn insert_referral(
        &mut self,
        referral: &Referral,
    ) -> Result<(), StoreError> {
        let f = &referral.fields;
        self.execute(Statement::new(
            "INSERT INTO referrals (id, identifier_system, identifier_value, stage, fhir_status, \
             intent, priority, authored_on, received_at, updated_at, received_as, \
             practice_ods_code, practice_name, referrer_name, referrer_identifier, \
             consent_status, consent_date, reply_to, patient_id, task_id, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21)",
        )
        .bind(&referral.id)
        .bind(&referral.identifier.system)
        .bind(&referral.identifier.value)
        .bind(referral.stage.as_str())
        .bind(&f.fhir_status)
        .bind(&f.intent)
        .bind(&f.priority)
        .bind(&f.authored_on)
        .bind(&referral.received_at)
        .bind(&referral.updated_at)
        .bind(referral.received_as.as_str())
        .bind(&f.practice_ods_code)
        .bind(&f.practice_name)
        .bind(&f.referrer_name)
        .bind(&f.referrer_identifier)
        .bind(&f.consent_status)
        .bind(&f.consent_date)
        .bind(&f.reply_to)
        .bind(&referral.patient_id)
        .bind(&referral.task_id)
        .bind(referral.version)
        ).await?;
        self.inserted_referral(&referral.id);
        self.write_details(&referral.id, f, &referral.received_at)
            .await
    }

    /// Replaces what came from the GP (an amendment), bumping the version.
    pub(in crate::store) async fn update_referral_fields(
        &mut self,
        id: &str,
        fields: &ReferralFields,
        at: &str,
    ) -> Result<(), StoreError> {
        let f = fields;
        self.execute(Statement::new(
            "UPDATE referrals SET fhir_status = $1, intent = $2, priority = $3, authored_on = $4, \
             practice_ods_code = $5, practice_name = $6, referrer_name = $7, \
             referrer_identifier = $8, consent_status = $9, consent_date = $10, reply_to = $11, \
             updated_at = $12, version = version + 1 WHERE id = $13",
        )
        .bind(&f.fhir_status)
        .bind(&f.intent)
        .bind(&f.priority)
        .bind(&f.authored_on)
        .bind(&f.practice_ods_code)
        .bind(&f.practice_name)
        .bind(&f.referrer_name)
        .bind(&f.referrer_identifier)
        .bind(&f.consent_status)
        .bind(&f.consent_date)
        .bind(&f.reply_to)
        .bind(at)
        .bind(id)
        ).await?;
        for delete in [
            "DELETE FROM referral_patients WHERE referral_id = $1",
            "DELETE FROM referral_reasons WHERE referral_id = $1",
            // The GP's notes are replaced by what the GP now sends; the service's stay.
            "DELETE FROM referral_notes WHERE referral_id = $1 AND source = 'gp'",
        ] {
            self.execute(Statement::new(delete).bind(id)).await?;
        }
        self.write_details(id, f, at).await
    }

    async fn write_details(
        &mut self,
        id: &str,
        f: &ReferralFields,
        at: &str,
    ) -> Result<(), StoreError> {
        let p = &f.patient;
        self.execute(Statement::new(
            "INSERT INTO referral_patients (referral_id, nhs_number, given_name, family_name, \
             birth_date, phone, email, address, postcode) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(&p.nhs_number)
        .bind(&p.given_name)
        .bind(&p.family_name)
        .bind(&p.birth_date)
        .bind(&p.phone)
        .bind(&p.email)
        .bind(&p.address)
        .bind(&p.postcode)
        ).await?;
        // One statement for every reason (a round trip each, with the writer held).
        let reasons = Statement::insert_rows(
            "INSERT INTO referral_reasons (referral_id, position, system, code, display, text)",
            f.reasons.iter().enumerate().map(|(position, reason)| {
                [
                    id.into_arg(),
                    i64::try_from(position).unwrap_or(i64::MAX).into_arg(),
                    (&reason.system).into_arg(),
                    (&reason.code).into_arg(),
                    (&reason.display).into_arg(),
                    (&reason.text).into_arg(),
                ]
            }),
        );
        if let Some(reasons) = reasons {
            self.execute(reasons).await?;
        }
        for text in &f.notes {
            self.add_note(id, NoteSource::Gp, None, text, at).await?;
        }
        Ok(())
    }

    /// Moves the referral to `stage`, bumping its version.
    pub(in crate::store) async fn set_stage(
        &mut self,
        id: &str,
        stage: Stage,
        at: &str,
    ) -> Result<(), StoreError> {
        self.execute(Statement::new(
            "UPDATE referrals SET stage = $1, updated_at = $2, version = version + 1 WHERE id = $3",
        )
        .bind(stage.as_str())
        .bind(at)
        .bind(id)
        ).await?;
        Ok(())
    }

    /// Adds a step to the timeline.
    pub(in crate::store) async fn add_stage_change(
        &mut self,
        change: &NewStageChange<'_>,
    ) -> Result<(), StoreError> {
        // MAX(seq) + 1 below is safe only while no other transaction adds to
        // this referral: lock it (a no-op on SQLite's single writer).
        self.lock_referral(change.referral_id).await?;
        self.execute(Statement::new(
            "INSERT INTO referral_stage_history \
             (referral_id, seq, stage, at, actor, reason, note, task_version) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM referral_stage_history WHERE referral_id = $1), \
             $2, $3, $4, $5, $6, $7)",
        )
        .bind(change.referral_id)
        .bind(change.stage.as_str())
        .bind(change.at)
        .bind(change.actor)
        .bind(change.reason)
        .bind(change.note)
        .bind(change.task_version)
        ).await?;
        Ok(())
    }

    /// Adds a note.
    pub(in crate::store) async fn add_note(
        &mut self,
        referral_id: &str,
        source: NoteSource,
        author: Option<&str>,
        text: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        // MAX(seq) + 1 below is safe only while no other transaction adds to
        // this referral: lock it (a no-op on SQLite's single writer).
        self.lock_referral(referral_id).await?;
        self.execute(Statement::new(
            "INSERT INTO referral_notes (referral_id, seq, at, source, author, text) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM referral_notes WHERE referral_id = $1), \
             $2, $3, $4, $5)",
        )
        .bind(referral_id)
        .bind(at)
        .bind(source.as_str())
        .bind(author)
        .bind(text)
        ).await?;
        Ok(())
    }

    /// Records an outcome measure and its answers.
    pub(in crate::store) async fn add_outcome(
        &mut self,
        referral_id: &str,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        self.execute(Statement::new(
            "INSERT INTO outcome_measures (id, referral_id, measure, recorded_at, entered_at, actor, \
             total, metric) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&outcome.id)
        .bind(referral_id)
        .bind(&outcome.measure)
        .bind(&outcome.recorded_at)
        .bind(&outcome.entered_at)
        .bind(&outcome.actor)
        .bind(outcome.total)
        .bind(&outcome.metric)
        ).await?;
        for (item, value) in outcome.answers.iter().enumerate() {
            self.execute(
                Statement::new(
                    "INSERT INTO outcome_answers (outcome_id, item, value) VALUES ($1, $2, $3)",
                )
                .bind(&outcome.id)
                .bind(item as i64 + 1)
                .bind(*value),
            )
            .await?;
        }
        Ok(())
    }

    /// The referral's outcome Observations (measure and id), in the order
    /// they were entered: the Task's `output`.
    pub(in crate::store) async fn outcome_ids(
        &mut self,
        referral_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT measure, id FROM outcome_measures WHERE referral_id = $1 \
             ORDER BY entered_at, id",
        )
        .bind(referral_id)
        .fetch_all(self.read_conn().await?)
        .await?)
    }

    /// The reason given for the referral's current stage, if any.
    pub(in crate::store) async fn current_reason(
        &mut self,
        referral_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT reason FROM referral_stage_history WHERE referral_id = $1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(referral_id)
        .fetch_optional(self.read_conn().await?)
        .await?;
        Ok(row.and_then(|(r,)| r))
    }

    /// Marks the record changed (a note or an outcome), bumping its version.
    pub(in crate::store) async fn touch_referral(
        &mut self,
        id: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            Statement::new(
                "UPDATE referrals SET updated_at = $1, version = version + 1 WHERE id = $2",
            )
            .bind(at)
            .bind(id),
        )
        .await?;
        Ok(())
    }

    /// Keeps a submission verbatim.
    pub(in crate::store) async fn add_submission(
        &mut self,
        submission: &Submission<'_>,
    ) -> Result<(), StoreError> {
        // MAX(seq) + 1 below is safe only while no other transaction adds to
        // this referral: lock it (a no-op on SQLite's single writer).
        self.lock_referral(submission.referral_id).await?;
        self.execute(Statement::new(
            "INSERT INTO referral_submissions \
             (referral_id, seq, received_at, received_as, request_id, correlation_id, body, response) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM referral_submissions WHERE referral_id = $1), \
             $2, $3, $4, $5, $6, $7)",
        )
        .bind(submission.referral_id)
        .bind(submission.received_at)
        .bind(submission.received_as)
        .bind(submission.request_id)
        .bind(submission.correlation_id)
        .bind(submission.body)
        .bind(submission.response)
        ).await?;
        Ok(())
    }

    /// The answer given to the submission that created the referral, to
    /// answer a resubmission the same way.
    pub(in crate::store) async fn first_response(
        &mut self,
        referral_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT response FROM referral_submissions WHERE referral_id = $1 ORDER BY seq LIMIT 1",
        )
        .bind(referral_id)
        .fetch_optional(self.read_conn().await?)
        .await?;
        Ok(row.and_then(|(r,)| r))
    }

    /// Records that a change must travel back.
    pub(in crate::store) async fn enqueue(
        &mut self,
        message: &OutboxMessage<'_>,
    ) -> Result<(), StoreError> {
        self.execute(
            Statement::new(
                "INSERT INTO outbox (referral_id, resource_type, resource_id, version_id, \
             destination_ods, reply_to, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(message.referral_id)
            .bind(message.resource_type)
            .bind(message.resource_id)
            .bind(message.version_id)
            .bind(message.destination_ods)
            .bind(message.reply_to)
            .bind(message.created_at),
        )
        .await?;
        self.enqueued = true;
        Ok(())
    }

    /// The answer remembered for an `X-Request-ID`, as this transaction sees
    /// it (the last word: writes are serialised).
    pub(in crate::store) async fn message_request(
        &mut self,
        sender: &str,
        request_id: &str,
    ) -> Result<Option<MessageRequest>, StoreError> {
        // Held until this transaction ends, so the same request sent twice at
        // once (to two instances) is answered once and remembered once.
        self.lock_identifier(sender, request_id).await?;
        fetch_message_request(self.read_conn().await?, sender, request_id).await
    }

    /// See `WriteTx::claim_message_request`.
    pub(in crate::store) async fn claim_message_request(
        &mut self,
        sender: &str,
        request_id: &str,
    ) -> Result<(), StoreError> {
        self.lock_identifier(sender, request_id).await?;
        self.fail_if_found(Guard::Request, message_request_held(sender, request_id))
            .await
    }

    /// Remembers the answer to an `X-Request-ID`.
    pub(in crate::store) async fn remember_message_request(
        &mut self,
        sender: &str,
        request_id: &str,
        body: &[u8],
        status: u16,
        response: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        self.execute(Statement::new(
            "INSERT INTO message_requests (sender, request_id, body, status, response, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(sender)
        .bind(request_id)
        .bind(body)
        .bind(i64::from(status))
        .bind(response)
        .bind(at)
        ).await?;
        Ok(())
    }
}

impl Backend {
    /// The referral `practice` sent with this business identifier, among committed
    /// (and so durable) referrals, read without taking the writer.
    pub(in crate::store) async fn committed_referral_by_identifier(
        &self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<Option<Referral>, StoreError> {
        // Most find nothing (a new referral): where the backend reads on this thread
        // (SQLite), the id alone is read there first, and a pool reader is taken only
        // for a referral found; elsewhere one pool reader does both.
        match self
            .direct_first_text(&referral_id_by_identifier(practice, identifier))
            .await?
        {
            Some(None) => Ok(None),
            Some(Some(id)) => fetch_referral(&mut *self.readers.acquire().await?, &id).await,
            None => {
                referral_by_identifier(&mut *self.readers.acquire().await?, practice, identifier)
                    .await
            }
        }
    }

    /// The answer remembered for an `X-Request-ID`, read without taking the
    /// writer: a resubmission is answered before anything is validated.
    pub(in crate::store) async fn message_request(
        &self,
        sender: &str,
        request_id: &str,
    ) -> Result<Option<MessageRequest>, StoreError> {
        // Most find nothing (the first copy): where the backend reads on this thread
        // (SQLite), whether one is held is read there first; elsewhere, and for one
        // held, the answer is read in full from a pool reader.
        let held = message_request_held(sender, request_id);
        if let Some(None) = self.direct_first_text(&held).await? {
            return Ok(None);
        }
        fetch_message_request(&mut *self.readers.acquire().await?, sender, request_id).await
    }

    /// One referral with its timeline, notes and outcomes.
    pub(in crate::store) async fn referral_detail(
        &self,
        id: &str,
    ) -> Result<Option<ReferralDetail>, StoreError> {
        let s = self;
        let mut conn = s.readers.acquire().await?;
        let Some(referral) = fetch_referral(&mut conn, id).await? else {
            return Ok(None);
        };
        let timeline = sqlx::query_as::<_, StageChangeRow>(
            "SELECT stage, at, actor, reason, note, task_version FROM referral_stage_history \
             WHERE referral_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| row.into_domain(id))
        .collect::<Result<Vec<_>, StoreError>>()?;
        let notes = sqlx::query_as::<_, NoteRow>(
            "SELECT source, at, author, text FROM referral_notes WHERE referral_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| row.into_domain(id))
        .collect::<Result<Vec<_>, StoreError>>()?;
        let outcomes = fetch_outcomes(&mut conn, id).await?;
        Ok(Some(ReferralDetail {
            referral,
            timeline,
            notes,
            outcomes,
        }))
    }

    /// A page of referrals, oldest received first.
    pub(in crate::store) async fn list_referrals(
        &self,
        filter: &ReferralFilter,
    ) -> Result<Vec<Referral>, StoreError> {
        let s = self;
        let mut sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals r \
             LEFT JOIN referral_patients p ON p.referral_id = r.id WHERE 1 = 1"
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.stage.is_some() {
            sql.push_str(&format!(" AND r.stage = {}", next()));
        }
        if filter.practice.is_some() {
            sql.push_str(&format!(" AND r.practice_ods_code = {}", next()));
        }
        if filter.received_from.is_some() {
            sql.push_str(&format!(" AND r.received_at >= {}", next()));
        }
        if filter.received_to.is_some() {
            sql.push_str(&format!(" AND r.received_at < {}", next()));
        }
        // Mine-or-nobody is not `assigned_to = $n OR assigned_to IS NULL`: that OR
        // defeats the index, and a link worker's default page scanned every referral.
        // It is two ordered range scans of `referrals_by_assignee_received`, each
        // stopped at the page's size, merged (`UNION ALL` below).
        let mut mine_or_nobody = None;
        match &filter.assignee {
            Assignee::Any => {}
            Assignee::Nobody => sql.push_str(" AND r.assigned_to IS NULL"),
            Assignee::Only(_) => sql.push_str(&format!(" AND r.assigned_to = {}", next())),
            Assignee::MineOrNobody(_) => mine_or_nobody = Some(next()),
        }
        if filter.reason.is_some() {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM referral_reasons rr \
                   WHERE rr.referral_id = r.id AND rr.code = {})",
                next()
            ));
        }
        if filter.not_contacted_before.is_some() {
            sql.push_str(&format!(
                " AND r.stage IN ('received', 'accepted') AND r.received_at < {}",
                next()
            ));
        }
        match &filter.person {
            None => {}
            Some(PersonSearch::NhsNumber(_)) => {
                sql.push_str(&format!(" AND p.nhs_number = {}", next()));
            }
            Some(PersonSearch::FamilyName(_)) => {
                // A prefix, any case (PostgreSQL's LIKE is case-sensitive, SQLite's
                // only for ASCII): both sides lowered, the pattern's own wildcards
                // escaped.
                sql.push_str(&format!(
                    " AND lower(p.family_name) LIKE lower({}) ESCAPE '\\'",
                    next()
                ));
            }
        }
        match &filter.ids {
            None => {}
            Some(ids) if ids.is_empty() => sql.push_str(" AND 1 = 0"),
            Some(_) => {
                // One bound JSON array, however many ids (the follow-up filter can hold
                // every referral held).
                let members = super::JSON_TEXT_MEMBERS.replace("{}", &next());
                sql.push_str(&format!(" AND r.id IN ({members})"));
            }
        }
        if filter.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(
                " AND (r.received_at > {a} OR (r.received_at = {b} AND r.id > {c}))"
            ));
        }
        let limit = next();
        let sql = match mine_or_nobody {
            // The same bound values serve both branches ($n may appear twice).
            Some(me) => format!(
                "SELECT * FROM ({sql} AND r.assigned_to = {me} \
                   ORDER BY r.received_at, r.id LIMIT {limit}) AS mine \
                 UNION ALL \
                 SELECT * FROM ({sql} AND r.assigned_to IS NULL \
                   ORDER BY r.received_at, r.id LIMIT {limit}) AS unassigned \
                 ORDER BY received_at, id LIMIT {limit}"
            ),
            None => format!("{sql} ORDER BY r.received_at, r.id LIMIT {limit}"),
        };
        // Built from fixed fragments only; every value is bound.
        let mut query = sqlx::query_as::<_, ReferralRow>(AssertSqlSafe(sql));
        if let Some(stage) = filter.stage {
            query = query.bind(stage.as_str());
        }
        if let Some(practice) = &filter.practice {
            query = query.bind(practice);
        }
        if let Some(from) = &filter.received_from {
            query = query.bind(from);
        }
        if let Some(to) = &filter.received_to {
            query = query.bind(to);
        }
        match &filter.assignee {
            Assignee::Any | Assignee::Nobody => {}
            Assignee::Only(who) | Assignee::MineOrNobody(who) => query = query.bind(who),
        }
        if let Some(reason) = &filter.reason {
            query = query.bind(reason);
        }
        if let Some(before) = &filter.not_contacted_before {
            query = query.bind(before);
        }
        match &filter.person {
            None => {}
            Some(PersonSearch::NhsNumber(number)) => query = query.bind(number),
            Some(PersonSearch::FamilyName(prefix)) => {
                let escaped = prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                query = query.bind(format!("{escaped}%"));
            }
        }
        if let Some(ids) = filter.ids.as_ref().filter(|ids| !ids.is_empty()) {
            let list = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt {
                resource_type: "ServiceRequest".into(),
                id: "id list".into(),
                reason: e.to_string(),
            })?;
            query = query.bind(list);
        }
        if let Some((at, id)) = &filter.after {
            query = query.bind(at).bind(at).bind(id);
        }
        query = query.bind(i64::from(filter.limit));
        let mut conn = s.readers.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        let mut referrals = rows
            .into_iter()
            .map(ReferralRow::into_domain)
            .collect::<Result<Vec<_>, _>>()?;
        // The list shows reasons but not notes: only the reasons are read.
        fill_reasons(&mut conn, &mut referrals).await?;
        Ok(referrals)
    }
}

impl Backend {
    /// How many referrals are in each stage, of those `assignee` names.
    pub(in crate::store) async fn stage_counts(
        &self,
        assignee: &Assignee,
    ) -> Result<Vec<(Stage, i64)>, StoreError> {
        let s = self;
        let (condition, who) = match assignee {
            Assignee::Any => ("1 = 1", None),
            Assignee::Nobody => ("assigned_to IS NULL", None),
            Assignee::Only(who) => ("assigned_to = $1", Some(who)),
            Assignee::MineOrNobody(who) => ("", Some(who)),
        };
        let sql = if matches!(assignee, Assignee::MineOrNobody(_)) {
            // Two index-only range scans, not an OR that reads every row.
            "SELECT stage, COUNT(*) AS n FROM \
               (SELECT stage FROM referrals WHERE assigned_to = $1 \
                UNION ALL SELECT stage FROM referrals WHERE assigned_to IS NULL) AS open \
             GROUP BY stage"
                .to_owned()
        } else {
            format!("SELECT stage, COUNT(*) AS n FROM referrals WHERE {condition} GROUP BY stage")
        };
        // Built from fixed fragments only; the username is bound.
        let mut query = sqlx::query_as::<_, StageCountRow>(AssertSqlSafe(sql));
        if let Some(who) = who {
            query = query.bind(who);
        }
        let mut conn = s.readers.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            counts.push((stage_of("stage-count", &row.stage)?, row.n));
        }
        counts.sort_by_key(|(stage, _)| Stage::ALL.iter().position(|s| s == stage));
        Ok(counts)
    }

    /// Referrals whose id or business identifier value is `text`
    /// ([`REFERRAL_HANDLES_SQL`]).
    pub(in crate::store) async fn referral_handles(
        &self,
        text: &str,
        limit: u32,
    ) -> Result<Vec<ReferralHandle>, StoreError> {
        let rows: Vec<ReferralHandleRow> = sqlx::query_as(REFERRAL_HANDLES_SQL)
            .bind(text)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        Ok(rows
            .into_iter()
            .map(ReferralHandleRow::into_domain)
            .collect())
    }

    /// Who a referral is assigned to: `None` when there is no such referral.
    pub(in crate::store) async fn referral_assignee(
        &self,
        id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT assigned_to FROM referrals WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.readers)
                .await?;
        Ok(row.map(|(who,)| who))
    }

    /// Per practice: referrals received, how many contacted, mean days to first contact.
    pub(in crate::store) async fn practice_figures(
        &self,
    ) -> Result<Vec<(Option<String>, i64, i64, Option<f64>)>, StoreError> {
        let sql = format!(
            "SELECT r.practice_ods_code, COUNT(*), COUNT(c.at), \
               AVG({}) \
             FROM referrals r LEFT JOIN (SELECT referral_id, MIN(at) AS at \
               FROM referral_stage_history WHERE stage = 'contacted' GROUP BY referral_id) c \
               ON c.referral_id = r.id \
             GROUP BY r.practice_ods_code ORDER BY r.practice_ods_code",
            super::days_between("c.at", "r.received_at")
        );
        // Built from fixed fragments only.
        let rows: Vec<(Option<String>, i64, i64, Option<f64>)> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.readers)
            .await?;
        Ok(rows)
    }

    /// Every contacted referral's assignee, practice, receipt and first contact.
    pub(in crate::store) async fn first_contacts(
        &self,
    ) -> Result<Vec<crate::store::referrals::FirstContact>, StoreError> {
        let rows = sqlx::query_as(
            "SELECT r.assigned_to, r.practice_ods_code, r.received_at, c.at \
             FROM referrals r JOIN (SELECT referral_id, MIN(at) AS at \
               FROM referral_stage_history WHERE stage = 'contacted' GROUP BY referral_id) c \
               ON c.referral_id = r.id",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows)
    }

    /// Open referrals per assignee (`None`: unassigned).
    pub(in crate::store) async fn caseloads(
        &self,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT assigned_to, COUNT(*) FROM referrals \
             WHERE stage NOT IN ('completed', 'declined', 'unable-to-contact', 'withdrawn') \
             GROUP BY assigned_to ORDER BY assigned_to",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows)
    }
}

impl Tx {
    /// Sets (or clears) who a referral is assigned to. False when there is no such referral.
    pub(in crate::store) async fn set_assignee(
        &mut self,
        id: &str,
        assignee: Option<&str>,
        at: &str,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE referrals SET assigned_to = $1, updated_at = $2, version = version + 1 \
             WHERE id = $3",
        )
        .bind(assignee)
        .bind(at)
        .bind(id)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }
}

/// A referral by its business identifier: `$1` the sending practice (`''` for none),
/// `$2` the identifier's system, `$3` its value. The unique index
/// `referrals_by_identifier (identifier_value, identifier_system,
/// COALESCE(practice_ods_code, ''))` answers it (migration 0017 put the value first, so
/// that the console's lookup by value alone reads the same index).
const REFERRAL_BY_IDENTIFIER_SQL: &str = "SELECT id FROM referrals WHERE COALESCE(practice_ods_code, '') = $1 \
     AND identifier_system = $2 AND identifier_value = $3";

/// Referrals whose id (`$1`) or business identifier value (`$1`) is the text asked, the
/// first `$2` received: the primary key and the value's prefix of
/// `referrals_by_identifier`.
const REFERRAL_HANDLES_SQL: &str = "SELECT id, identifier_system, identifier_value, practice_ods_code, received_at \
     FROM referrals WHERE id = $1 OR identifier_value = $1 \
     ORDER BY received_at, id LIMIT $2";

impl Backend {
    /// The lookups outside search whose indexes migration 0017 changed, each with the
    /// indexes it must read, for the tests that check their plans on each backend.
    pub(in crate::store) fn lookup_statements(
        &self,
    ) -> Vec<(&'static [&'static str], SearchStatement)> {
        let text = |value: &str| BoundValue::Text(value.to_owned());
        let agent = crate::store::audit::AuditFilter {
            agent: Some("someone".into()),
            ..Default::default()
        };
        let page = crate::store::audit::AuditPage {
            after: None,
            limit: 50,
        };
        vec![
            (
                &["referrals_by_identifier"],
                SearchStatement {
                    sql: REFERRAL_BY_IDENTIFIER_SQL.to_owned(),
                    binds: vec![text("A1"), text("https://example.org/id"), text("V-1")],
                },
            ),
            (
                &["referrals_by_identifier"],
                SearchStatement {
                    sql: REFERRAL_HANDLES_SQL.to_owned(),
                    binds: vec![text("V-1"), BoundValue::Int(20)],
                },
            ),
            (
                &["search_references_by_target_id"],
                SearchStatement {
                    sql: super::retention::referrers_sql(),
                    binds: vec![text("Patient"), text("p1")],
                },
            ),
            (
                &[
                    "audit_events_by_client",
                    "audit_events_by_staff",
                    "audit_events_by_proxy",
                ],
                SearchStatement {
                    sql: super::audit::audit_page_query(&agent, page)
                        .sql()
                        .as_str()
                        .to_owned(),
                    binds: vec![
                        text("someone"),
                        text("someone"),
                        text("someone"),
                        BoundValue::Int(50),
                    ],
                },
            ),
        ]
    }
}

/// The lookup `referrals_by_identifier` answers, on one connection: one referral per
/// identifier per sending practice.
async fn referral_by_identifier(
    conn: &mut Conn,
    practice: Option<&str>,
    identifier: &BusinessIdentifier,
) -> Result<Option<Referral>, StoreError> {
    let id =
        super::statement::first_text(&mut *conn, referral_id_by_identifier(practice, identifier))
            .await?;
    match id {
        Some(id) => fetch_referral(conn, &id).await,
        None => Ok(None),
    }
}

/// The query for `sender`'s `X-Request-ID`, if an answer to it is remembered.
fn message_request_held(sender: &str, request_id: &str) -> Statement {
    Statement::new("SELECT request_id FROM message_requests WHERE sender = $1 AND request_id = $2")
        .bind(sender)
        .bind(request_id)
}

/// The query for the id of the referral `practice` sent with `identifier`.
fn referral_id_by_identifier(practice: Option<&str>, identifier: &BusinessIdentifier) -> Statement {
    Statement::new(REFERRAL_BY_IDENTIFIER_SQL)
        .bind(practice.unwrap_or_default())
        .bind(&identifier.system)
        .bind(&identifier.value)
}

async fn fetch_message_request(
    conn: &mut Conn,
    sender: &str,
    request_id: &str,
) -> Result<Option<MessageRequest>, StoreError> {
    let row: Option<MessageRequestRow> = sqlx::query_as(
        "SELECT body, status, response FROM message_requests WHERE sender = $1 AND request_id = $2",
    )
    .bind(sender)
    .bind(request_id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| row.into_domain(request_id)).transpose()
}

async fn fetch_referral(conn: &mut Conn, id: &str) -> Result<Option<Referral>, StoreError> {
    let row: Option<ReferralRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {REFERRAL_COLUMNS} FROM referrals r \
         LEFT JOIN referral_patients p ON p.referral_id = r.id WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(with_gp_notes(conn, row.into_domain()?).await?)),
        None => Ok(None),
    }
}

/// Fills in the reasons and the GP's notes, which live in their own tables.
async fn with_gp_notes(conn: &mut Conn, mut referral: Referral) -> Result<Referral, StoreError> {
    referral.fields.reasons = reasons_of(conn, &referral.id).await?;
    referral.fields.notes = sqlx::query_as::<_, (String,)>(
        "SELECT text FROM referral_notes WHERE referral_id = $1 AND source = 'gp' ORDER BY seq",
    )
    .bind(&referral.id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(text,)| text)
    .collect();
    Ok(referral)
}

async fn reasons_of(conn: &mut Conn, referral_id: &str) -> Result<Vec<Reason>, StoreError> {
    Ok(sqlx::query_as::<_, ReasonRow>(
        "SELECT system, code, display, text FROM referral_reasons WHERE referral_id = $1 \
         ORDER BY position",
    )
    .bind(referral_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(ReasonRow::into_domain)
    .collect())
}

/// The reasons of every referral on a list page, in one query rather than
/// one per referral (a page holds up to 200).
async fn fill_reasons(conn: &mut Conn, referrals: &mut [Referral]) -> Result<(), StoreError> {
    if referrals.is_empty() {
        return Ok(());
    }
    let placeholders = (1..=referrals.len())
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Built from placeholders only; every id is bound.
    let mut query = sqlx::query_as::<_, ReferralReasonRow>(AssertSqlSafe(format!(
        "SELECT referral_id, system, code, display, text FROM referral_reasons \
         WHERE referral_id IN ({placeholders}) ORDER BY referral_id, position"
    )));
    for referral in referrals.iter() {
        query = query.bind(referral.id.as_str());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut by_referral: HashMap<String, Vec<Reason>> = HashMap::new();
    for row in rows {
        by_referral
            .entry(row.referral_id)
            .or_default()
            .push(row.reason.into_domain());
    }
    for referral in referrals {
        referral.fields.reasons = by_referral.remove(&referral.id).unwrap_or_default();
    }
    Ok(())
}

async fn fetch_outcomes(conn: &mut Conn, referral_id: &str) -> Result<Vec<Outcome>, StoreError> {
    let rows: Vec<OutcomeRow> = sqlx::query_as(
        "SELECT id, measure, recorded_at, entered_at, actor, total, metric FROM outcome_measures \
         WHERE referral_id = $1 ORDER BY recorded_at, id",
    )
    .bind(referral_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let answers = sqlx::query_as::<_, (i64,)>(
            "SELECT value FROM outcome_answers WHERE outcome_id = $1 ORDER BY item",
        )
        .bind(&row.id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(v,)| v)
        .collect();
        outcomes.push(Outcome {
            id: row.id,
            measure: row.measure,
            recorded_at: row.recorded_at,
            entered_at: row.entered_at,
            actor: row.actor,
            answers,
            total: row.total,
            metric: row.metric,
        });
    }
    Ok(outcomes)
}

fn corrupt(id: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        resource_type: "referral".into(),
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

fn stage_of(referral_id: &str, code: &str) -> Result<Stage, StoreError> {
    Stage::parse(code).map_err(|_| corrupt(referral_id, "unknown stage"))
}

fn note_source_of(referral_id: &str, code: &str) -> Result<NoteSource, StoreError> {
    NoteSource::parse(code).ok_or_else(|| corrupt(referral_id, "unknown note source"))
}

/// A referral with its patient's contact details: the columns of `REFERRAL_COLUMNS`.
#[derive(sqlx::FromRow)]
struct ReferralRow {
    id: String,
    identifier_system: String,
    identifier_value: String,
    stage: String,
    fhir_status: String,
    intent: Option<String>,
    priority: Option<String>,
    authored_on: Option<String>,
    received_at: String,
    updated_at: String,
    received_as: String,
    practice_ods_code: Option<String>,
    practice_name: Option<String>,
    referrer_name: Option<String>,
    referrer_identifier: Option<String>,
    consent_status: Option<String>,
    consent_date: Option<String>,
    reply_to: Option<String>,
    patient_id: Option<String>,
    task_id: String,
    version: i64,
    assigned_to: Option<String>,
    nhs_number: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    birth_date: Option<String>,
    phone: Option<String>,
    email: Option<String>,
    address: Option<String>,
    postcode: Option<String>,
}

impl ReferralRow {
    /// The record without its reasons and GP's notes, which live in their own tables.
    fn into_domain(self) -> Result<Referral, StoreError> {
        let stage = stage_of(&self.id, &self.stage)?;
        let received_as = ReceivedAs::parse(&self.received_as)
            .ok_or_else(|| corrupt(&self.id, "unknown received_as"))?;
        Ok(Referral {
            identifier: BusinessIdentifier {
                system: self.identifier_system,
                value: self.identifier_value,
            },
            stage,
            received_as,
            received_at: self.received_at,
            updated_at: self.updated_at,
            patient_id: self.patient_id,
            task_id: self.task_id,
            version: self.version,
            assigned_to: self.assigned_to,
            fields: ReferralFields {
                fhir_status: self.fhir_status,
                intent: self.intent,
                priority: self.priority,
                authored_on: self.authored_on,
                practice_ods_code: self.practice_ods_code,
                practice_name: self.practice_name,
                referrer_name: self.referrer_name,
                referrer_identifier: self.referrer_identifier,
                consent_status: self.consent_status,
                consent_date: self.consent_date,
                reply_to: self.reply_to,
                patient: PatientContact {
                    nhs_number: self.nhs_number,
                    given_name: self.given_name,
                    family_name: self.family_name,
                    birth_date: self.birth_date,
                    phone: self.phone,
                    email: self.email,
                    address: self.address,
                    postcode: self.postcode,
                },
                reasons: Vec::new(),
                notes: Vec::new(),
            },
            id: self.id,
        })
    }
}

/// One entry of a referral's timeline (`referral_stage_history`).
#[derive(sqlx::FromRow)]
struct StageChangeRow {
    stage: String,
    at: String,
    actor: String,
    reason: Option<String>,
    note: Option<String>,
    task_version: i64,
}

impl StageChangeRow {
    fn into_domain(self, referral_id: &str) -> Result<StageChange, StoreError> {
        Ok(StageChange {
            stage: stage_of(referral_id, &self.stage)?,
            at: self.at,
            actor: self.actor,
            reason: self.reason,
            note: self.note,
            task_version: self.task_version,
        })
    }
}

/// One note on a referral (`referral_notes`).
#[derive(sqlx::FromRow)]
struct NoteRow {
    source: String,
    at: String,
    author: Option<String>,
    text: String,
}

impl NoteRow {
    fn into_domain(self, referral_id: &str) -> Result<Note, StoreError> {
        Ok(Note {
            source: note_source_of(referral_id, &self.source)?,
            at: self.at,
            author: self.author,
            text: self.text,
        })
    }
}

/// One reason for a referral (`referral_reasons`).
#[derive(sqlx::FromRow)]
struct ReasonRow {
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
    text: Option<String>,
}

impl ReasonRow {
    fn into_domain(self) -> Reason {
        Reason {
            system: self.system,
            code: self.code,
            display: self.display,
            text: self.text,
        }
    }
}

/// A reason with the referral it belongs to, for a page of referrals.
#[derive(sqlx::FromRow)]
struct ReferralReasonRow {
    referral_id: String,
    #[sqlx(flatten)]
    reason: ReasonRow,
}

/// One outcome measure recorded for a referral, without its answers.
#[derive(sqlx::FromRow)]
struct OutcomeRow {
    id: String,
    measure: String,
    recorded_at: String,
    entered_at: String,
    actor: String,
    total: Option<i64>,
    metric: Option<String>,
}

/// How many referrals are in one stage.
#[derive(sqlx::FromRow)]
struct StageCountRow {
    stage: String,
    n: i64,
}

/// What finds a referral by id or business identifier.
#[derive(sqlx::FromRow)]
struct ReferralHandleRow {
    id: String,
    identifier_system: String,
    identifier_value: String,
    practice_ods_code: Option<String>,
    received_at: String,
}

impl ReferralHandleRow {
    fn into_domain(self) -> ReferralHandle {
        ReferralHandle {
            id: self.id,
            identifier_system: self.identifier_system,
            identifier_value: self.identifier_value,
            practice_ods_code: self.practice_ods_code,
            received_at: self.received_at,
        }
    }
}

/// The answer remembered for an `X-Request-ID` (`message_requests`).
#[derive(sqlx::FromRow)]
struct MessageRequestRow {
    body: Vec<u8>,
    status: i64,
    response: String,
}

impl MessageRequestRow {
    fn into_domain(self, request_id: &str) -> Result<MessageRequest, StoreError> {
        Ok(MessageRequest {
            body: self.body,
            status: u16::try_from(self.status).map_err(|_| StoreError::Corrupt {
                resource_type: "message_request".into(),
                id: request_id.to_owned(),
                reason: "status out of range".into(),
            })?,
            response: self.response,
        })
    }
}
