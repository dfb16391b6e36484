// Privacy requests as operators see them: the open ones (or all), overdue
// first and marked, then by due date (the API's order, privacy's rule).
import { api } from "../../api";
import { navigate, useLocation } from "../../router";
import { ErrorMessage, formatDate, useLoad } from "../../ui";
import { AdminLayout, Empty, Flag } from "./common";

interface PrivacyRequest {
  id: string;
  user_id: string | null;
  kind: string;
  status: string;
  created_at: string;
  due_at: string | null;
  overdue: boolean;
  completed_at: string | null;
}

export function AdminPrivacyRequests({ path }: { path: string }) {
  const { query } = useLocation();
  const status = query.get("status") === "all" ? "all" : "open";
  const requests = useLoad(() => api<{ items: PrivacyRequest[] }>("GET", "/v1/admin/privacy-requests", { query: { status } }), [status]);
  const items = requests.data?.items || [];
  const overdue = items.filter((r) => r.overdue).length;
  return (
    <AdminLayout title="Privacy requests" path={path}>
      <div class="toolbar" role="group" aria-label="Show">
        {[
          ["open", "Open"],
          ["all", "All"],
        ].map(([value, label]) => (
          <button
            key={value}
            type="button"
            class={status === value ? "" : "secondary"}
            aria-pressed={status === value}
            onClick={() => navigate(value === "open" ? "/admin/privacy-requests" : "/admin/privacy-requests?status=all", { replace: true })}
          >
            {label}
          </button>
        ))}
      </div>
      <ErrorMessage error={requests.error} />
      {requests.data && (
        <p data-testid="privacy-summary">
          {items.length} request(s){overdue > 0 && <strong>, {overdue} overdue</strong>}.
        </p>
      )}
      {requests.data && items.length === 0 && <Empty>No {status === "open" ? "open " : ""}privacy requests.</Empty>}
      <ul class="list" aria-label="Privacy requests">
        {items.map((r) => (
          <li key={r.id} data-testid="privacy-request" class={r.overdue ? "overdue" : undefined}>
            <div class="row">
              <span>
                <strong>{r.kind}</strong> · {r.status} · <code>{r.id}</code>
              </span>
              {r.overdue && <Flag>overdue</Flag>}
            </div>
            <p class="meta">
              {r.user_id ? (
                <>
                  user <code>{r.user_id}</code>
                </>
              ) : (
                "account erased"
              )}{" "}
              · asked {formatDate(r.created_at)} · <strong>due {formatDate(r.due_at)}</strong>
              {r.completed_at && <> · completed {formatDate(r.completed_at)}</>}
            </p>
          </li>
        ))}
      </ul>
    </AdminLayout>
  );
}
