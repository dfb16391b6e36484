// The privacy center: export (request and download), erasure with
// re-authentication, its grace period and cancel; the page of one request
// (the export-ready mail's link); and the page the erasure mail's cancel link
// opens.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, Page } from "../api";
import { Link, useLocation } from "../router";
import { refreshMe } from "../session";
import type { Me } from "../session";
import { ConsentsPanel, DisclosuresPanel, PolicyPanel } from "./consents";
import { ErrorMessage, Field, formatDate, Notice, PageTitle, useAction, useLoad } from "../ui";

interface PrivacyRequest {
  id: string;
  type: string;
  status: string;
  created_at: string;
  due_at: string;
  starts_at: string | null;
  completed_at: string | null;
  download_url: string | null;
  download_expires_at: string | null;
  certificate_url: string | null;
}

export function PrivacyCenter({ me }: { me: Me }) {
  const totp = me.totp_enabled;
  const requests = useLoad(() => api<Page<PrivacyRequest>>("GET", "/v1/privacy/requests", { query: { limit: 20 } }));
  const exportAction = useAction(async () => {
    await api("POST", "/v1/privacy/requests", { body: { type: "export" } });
    requests.reload();
  });
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const erase = useAction(async () => {
    const body: Record<string, string> = { type: "erasure", password };
    if (totp) body.totp_code = code;
    await api("POST", "/v1/privacy/requests", { body });
    setPassword("");
    setCode("");
    requests.reload();
  });
  const items = requests.data?.items || [];
  const open = items.some((r) => r.status === "pending" || r.status === "in_progress");
  useEffect(() => {
    if (!open) return;
    // an open request changes on its own: an export is built, an erasure starts
    const timer = setInterval(() => requests.reload(), 3000);
    return () => clearInterval(timer);
  }, [open]);
  const pendingErasure = items.find((r) => r.type === "erasure" && (r.status === "pending" || r.status === "in_progress"));
  return (
    <section>
      <PageTitle>Privacy center</PageTitle>
      <ErrorMessage error={requests.error} />
      <section class="panel" aria-labelledby="export-heading">
        <h2 id="export-heading">Export your data</h2>
        <p>One ZIP archive with what every service keeps about you and your images. We mail you when it is ready.</p>
        <ErrorMessage error={exportAction.error} />
        <button type="button" disabled={exportAction.busy} onClick={() => exportAction.run()}>
          Request an export
        </button>
      </section>
      <section class="panel" aria-labelledby="requests-heading">
        <div class="row">
          <h2 id="requests-heading">Your requests</h2>
          <button type="button" class="secondary" onClick={() => requests.reload()}>
            Refresh
          </button>
        </div>
        {items.length === 0 && <p>No requests yet.</p>}
        <ul class="list">
          {items.map((r) => (
            <RequestRow key={r.id} request={r} onChange={() => requests.reload()} />
          ))}
        </ul>
      </section>
      <ConsentsPanel />
      <PolicyPanel me={me} />
      <DisclosuresPanel />
      <section class="panel danger-zone" aria-labelledby="erasure-heading">
        <h2 id="erasure-heading">Delete your account</h2>
        {pendingErasure ? (
          <p>An erasure is already under way (see your requests above).</p>
        ) : (
          <form
            onSubmit={(e) => {
              e.preventDefault();
              erase.run();
            }}
          >
            <p>
              Everything about you is erased after a grace period, during which you can cancel. Confirm with your password
              {totp ? " and an authenticator code" : ""}.
            </p>
            <Field label="Password" name="erasure_password" type="password" autoComplete="current-password" required value={password} onValue={setPassword} />
            {totp && <Field label="Authenticator code" name="erasure_totp" inputMode="numeric" required value={code} onValue={setCode} />}
            <ErrorMessage error={erase.error} />
            <button type="submit" class="danger" disabled={erase.busy}>
              Delete my account
            </button>
          </form>
        )}
      </section>
    </section>
  );
}

function RequestRow({ request, onChange }: { request: PrivacyRequest; onChange: () => void }) {
  const download = useAction(async () => {
    const full = await api<PrivacyRequest>("GET", `/v1/privacy/requests/${request.id}`);
    if (!full.download_url) throw new ApiError(404, "not_ready", "The archive is not available.");
    window.location.href = full.download_url;
  });
  const cancel = useAction(async () => {
    await api("DELETE", `/v1/privacy/requests/${request.id}`);
    onChange();
  });
  return (
    <li class="request" data-request-type={request.type} data-request-status={request.status}>
      <p>
        <strong>{request.type}</strong> · <span data-testid="request-status">{request.status}</span> · asked{" "}
        {formatDate(request.created_at)}
        {request.type === "erasure" && request.status === "pending" && request.starts_at && (
          <> · starts {formatDate(request.starts_at)}</>
        )}
        {request.completed_at && <> · done {formatDate(request.completed_at)}</>}
      </p>
      <div class="actions">
        {request.type === "export" && request.status === "completed" && (
          <button type="button" class="secondary" disabled={download.busy} onClick={() => download.run()}>
            Download the archive
          </button>
        )}
        {request.type === "erasure" && request.status === "pending" && (
          <button type="button" class="secondary" disabled={cancel.busy} onClick={() => cancel.run()}>
            Cancel the erasure
          </button>
        )}
      </div>
      <ErrorMessage error={download.error || cancel.error} />
    </li>
  );
}

/** One request of the signed-in person: the export-ready mail links here. */
export function PrivacyRequestPage({ requestId }: { requestId: string }) {
  const request = useLoad(() => api<PrivacyRequest>("GET", `/v1/privacy/requests/${encodeURIComponent(requestId)}`));
  return (
    <section class="narrow">
      <PageTitle>Your privacy request</PageTitle>
      <ErrorMessage error={request.error} />
      {request.data && (
        <ul class="list">
          <RequestRow request={request.data} onChange={() => request.reload()} />
        </ul>
      )}
      <p>
        <Link href="/privacy">All your requests, in the privacy center</Link>
      </p>
    </section>
  );
}

export function CancelErasure({ requestId }: { requestId: string }) {
  const { query } = useLocation();
  const token = query.get("token") || "";
  const [done, setDone] = useState(false);
  const action = useAction(async () => {
    await api("POST", `/v1/privacy/requests/${encodeURIComponent(requestId)}/cancel`, { body: token ? { token } : {}, auth: !token });
    setDone(true);
    await refreshMe().catch(() => undefined);
  });
  return (
    <section class="narrow">
      <PageTitle>Cancel the erasure of your account</PageTitle>
      {done ? (
        <Notice>The erasure is cancelled. Your account stays as it is.</Notice>
      ) : (
        <>
          <p>Your account is waiting out the grace period before it is erased. Cancel to keep it.</p>
          <ErrorMessage error={action.error} />
          <button type="button" disabled={action.busy} onClick={() => action.run()}>
            Keep my account
          </button>
        </>
      )}
    </section>
  );
}
