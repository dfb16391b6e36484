// The operators' area (/admin/...): its pages for administrators, a refusal
// for anyone else. Which paths exist lives here; app.tsx only hands them over.
import type { ComponentChildren } from "preact";
import type { Me } from "../../session";
import { AdminBreaches } from "./breaches";
import { OperatorsOnly } from "./common";
import { AdminDeadLetters } from "./deadletters";
import { AdminJobs } from "./jobs";
import { AdminPrivacyRequests } from "./privacy";
import { AdminUsers } from "./users";

export function isAdminPath(path: string): boolean {
  return path === "/admin" || path.startsWith("/admin/");
}

/** The page of an /admin path for a signed-in person; null for an unknown one. */
export function adminRoute(path: string, me: Me): ComponentChildren | null {
  const pages: Record<string, () => ComponentChildren> = {
    "/admin": () => <AdminJobs path="/admin/jobs" />,
    "/admin/jobs": () => <AdminJobs path={path} />,
    "/admin/dead-letters": () => <AdminDeadLetters path={path} />,
    "/admin/privacy-requests": () => <AdminPrivacyRequests path={path} />,
    "/admin/users": () => <AdminUsers path={path} me={me} />,
    "/admin/breaches": () => <AdminBreaches path={path} />,
  };
  if (!pages[path]) return null;
  return me.is_admin ? pages[path]() : <OperatorsOnly me={me} />;
}
