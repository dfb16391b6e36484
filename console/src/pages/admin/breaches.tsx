// Breach incidents: the regulator's 72-hour deadline of each, the overdue
// ones marked (open and overdue first: the API's order).
import { api } from "../../api";
import { ErrorMessage, formatDate, useLoad } from "../../ui";
import { AdminLayout, Empty, Flag } from "./common";

interface Incident {
  id: string;
  summary: string;
  categories: string[];
  state: string;
  detected_at: string;
  authority_deadline?: string;
  deadline_at?: string;
  hours_left?: number | null;
  reported_at: string | null;
  overdue: boolean;
  affected?: number;
  records?: number;
  notices?: Record<string, number>;
}

export function AdminBreaches({ path }: { path: string }) {
  const incidents = useLoad(() => api<{ items: Incident[] }>("GET", "/v1/admin/breaches"));
  return (
    <AdminLayout title="Breach incidents" path={path}>
      <p>
        Each incident is reported to the supervisory authority within 72 hours of its detection. Incidents are opened, counted and reported with{" "}
        <code>darkroom-ops breach</code>.
      </p>
      <ErrorMessage error={incidents.error} />
      {incidents.data && incidents.data.items.length === 0 && <Empty>No breach incidents.</Empty>}
      <ul class="list" aria-label="Breach incidents">
        {(incidents.data?.items || []).map((i) => (
          <li key={i.id} data-testid="breach" class={i.overdue ? "overdue" : undefined}>
            <div class="row">
              <strong>{i.summary}</strong>
              {i.overdue ? <Flag>overdue</Flag> : i.reported_at ? <Flag kind="ok">reported</Flag> : <Flag kind="muted">{i.state}</Flag>}
            </div>
            <p class="meta">
              <code>{i.id}</code> · {i.categories.join(", ")} · detected {formatDate(i.detected_at)}
              <br />
              <strong>report by {formatDate(i.authority_deadline || i.deadline_at)}</strong>
              {typeof i.hours_left === "number" && (i.hours_left >= 0 ? ` (${i.hours_left} h left)` : ` (${-i.hours_left} h past)`)}
              {i.reported_at && ` · reported ${formatDate(i.reported_at)}`}
              {typeof i.affected === "number" && ` · ${i.affected} affected user(s)`}
              {i.notices && Object.keys(i.notices).length > 0 && ` · notices: ${Object.entries(i.notices).map(([k, v]) => `${v} ${k}`).join(", ")}`}
            </p>
          </li>
        ))}
      </ul>
    </AdminLayout>
  );
}
