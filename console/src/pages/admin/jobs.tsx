// Failed jobs (or any status): each with its error, replayed or cancelled by
// an operator (POST /v1/admin/jobs/{id}/replay|cancel), the answer or the
// API's error shown on the job itself.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../../api";
import { navigate, useLocation } from "../../router";
import { ErrorMessage, formatDate, Notice, useAction, useLoad } from "../../ui";
import { AdminLayout, Empty, Flag } from "./common";

export interface AdminJob {
  id: string;
  user_id: string;
  status: string;
  type: string;
  model: string | null;
  provider: string | null;
  attempt: number;
  created_at: string;
  finished_at: string | null;
  error: { code: string; message: string } | null;
  prompt?: string | null;
  prompt_redacted?: boolean;
}

const STATUSES = ["failed", "queued", "reserved", "running", "succeeded", "rejected", "cancelled"];
const UNFINISHED = ["queued", "reserved", "running"];

function JobItem({ initial }: { initial: AdminJob }) {
  const [job, setJob] = useState(initial);
  const [done, setDone] = useState<string | null>(null);
  const replay = useAction(async () => {
    setDone(null);
    const answer = await api<AdminJob>("POST", `/v1/admin/jobs/${job.id}/replay`);
    setJob(answer);
    setDone(`Replayed: attempt ${answer.attempt}, now ${answer.status}.`);
  });
  const cancel = useAction(async () => {
    setDone(null);
    const answer = await api<AdminJob>("POST", `/v1/admin/jobs/${job.id}/cancel`);
    setJob(answer);
    setDone(`Cancelled: now ${answer.status}.`);
  });
  const busy = replay.busy || cancel.busy;
  // the button pressed may be gone with the job's new status: the keyboard's
  // focus goes to the outcome instead of the page's start
  const outcome = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (done || replay.error || cancel.error) outcome.current?.focus();
  }, [done, replay.error, cancel.error]);
  return (
    <li data-testid="admin-job" data-job-id={job.id}>
      <div class="row">
        <h2 class="item-title" id={`job-${job.id}`}>
          <code>{job.id}</code>
        </h2>
        <Flag kind={job.status === "succeeded" ? "ok" : job.status === "failed" ? "danger" : "muted"}>{job.status}</Flag>
      </div>
      <p class="meta">
        {job.type} · {job.model || "no model"} {job.provider && `via ${job.provider}`} · attempt {job.attempt} · user <code>{job.user_id}</code>
        <br />
        made {formatDate(job.created_at)} · ended {formatDate(job.finished_at)}
      </p>
      {job.error && (
        <p class="job-error" data-testid="job-error">
          <code class="error-code">{job.error.code}</code> {job.error.message}
        </p>
      )}
      {job.prompt_redacted ? (
        <p class="prompt">
          Prompt: <em>redacted</em>
        </p>
      ) : (
        job.prompt && <p class="prompt">Prompt: {job.prompt}</p>
      )}
      <div ref={outcome} tabIndex={-1} class="outcome">
        <ErrorMessage error={replay.error || cancel.error} />
        {done && <Notice>{done}</Notice>}
      </div>
      <div class="actions">
        {job.status === "failed" && (
          <button type="button" class="small" disabled={busy} onClick={() => replay.run()} aria-label={`Replay job ${job.id}`}>
            Replay
          </button>
        )}
        {UNFINISHED.includes(job.status) && (
          <button type="button" class="danger small" disabled={busy} onClick={() => cancel.run()} aria-label={`Cancel job ${job.id}`}>
            Cancel
          </button>
        )}
      </div>
    </li>
  );
}

export function AdminJobs({ path }: { path: string }) {
  const { query } = useLocation();
  const status = query.get("status") || "failed";
  const reason = query.get("reason") || "";
  const since = query.get("since") || "";
  const jobs = useLoad(() => api<{ items: AdminJob[] }>("GET", "/v1/admin/jobs", { query: { status, reason, since, limit: 100 } }), [status, reason, since]);
  const [form, setForm] = useState({ status, reason, since });
  const apply = (e: Event) => {
    e.preventDefault();
    const next = new URLSearchParams();
    if (form.status !== "failed") next.set("status", form.status);
    if (form.reason.trim()) next.set("reason", form.reason.trim());
    if (form.since.trim()) next.set("since", form.since.trim());
    const search = next.toString();
    navigate(search ? `/admin/jobs?${search}` : "/admin/jobs", { replace: true });
  };
  return (
    <AdminLayout title="Failed jobs" path={path}>
      <form class="filters" onSubmit={apply} aria-label="Filter jobs">
        <div class="field">
          <label for="field-status">Status</label>
          <select id="field-status" name="status" value={form.status} onChange={(e) => setForm({ ...form, status: (e.target as HTMLSelectElement).value })}>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="field-reason">Error code</label>
          <input id="field-reason" name="reason" placeholder="provider_error" value={form.reason} onInput={(e) => setForm({ ...form, reason: (e.target as HTMLInputElement).value })} />
        </div>
        <div class="field">
          <label for="field-since">Changed within</label>
          <input
            id="field-since"
            name="since"
            placeholder="2h"
            aria-describedby="field-since-hint"
            value={form.since}
            onInput={(e) => setForm({ ...form, since: (e.target as HTMLInputElement).value })}
          />
          <p class="hint" id="field-since-hint">
            An age (30m, 2h, 3d) or an ISO time.
          </p>
        </div>
        <div class="actions">
          <button type="submit">Show</button>
          <button type="button" class="secondary" onClick={() => jobs.reload()}>
            Refresh
          </button>
        </div>
      </form>
      <ErrorMessage error={jobs.error} />
      {jobs.data && jobs.data.items.length === 0 && <Empty>No {status} jobs{reason ? ` with ${reason}` : ""}.</Empty>}
      <ul class="list" aria-label="Jobs">
        {(jobs.data?.items || []).map((job) => (
          <JobItem key={`${job.id}:${job.attempt}:${job.status}`} initial={job} />
        ))}
      </ul>
    </AdminLayout>
  );
}
