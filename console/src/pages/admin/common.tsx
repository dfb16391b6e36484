// What every operator page shares: the refusal a non-administrator sees, the
// operators' own navigation, and the small pieces of their lists.
import type { ComponentChildren } from "preact";
import { Link } from "../../router";
import type { Me } from "../../session";
import { PageTitle } from "../../ui";

export const ADMIN_PAGES: [string, string][] = [
  ["/admin/jobs", "Failed jobs"],
  ["/admin/dead-letters", "Dead letters"],
  ["/admin/privacy-requests", "Privacy requests"],
  ["/admin/users", "Users"],
  ["/admin/breaches", "Breaches"],
];

/** The answer to a signed-in person who is not an administrator: the API
 * would refuse them (403 ``admin_required``) and the page says so at once. */
export function OperatorsOnly({ me }: { me: Me }) {
  return (
    <section class="narrow" data-testid="operators-only">
      <PageTitle>Operators only</PageTitle>
      <p>
        These pages are for the service's administrators, and {me.email} is not one. An administrator signs in with a password and an
        authenticator code (or a passkey); an existing one can grant the right with <code>darkroom-ops users grant-admin</code>.
      </p>
      <p>
        <Link href="/generate">Go to Generate</Link>
      </p>
    </section>
  );
}

/** The page's title and the operators' navigation between their pages. */
export function AdminLayout({ title, path, children }: { title: string; path: string; children: ComponentChildren }) {
  return (
    <section>
      <PageTitle>{title}</PageTitle>
      <nav aria-label="Operators" class="subnav">
        <ul>
          {ADMIN_PAGES.map(([href, label]) => (
            <li key={href}>
              <Link href={href} aria-current={path === href ? "page" : undefined}>
                {label}
              </Link>
            </li>
          ))}
        </ul>
      </nav>
      {children}
    </section>
  );
}

/** A badge that stands out (overdue, disabled, failed): text, not colour alone. */
export function Flag({ children, kind = "danger" }: { children: ComponentChildren; kind?: "danger" | "ok" | "muted" }) {
  return <span class={`flag flag-${kind}`}>{children}</span>;
}

/** Nothing to list: said in words rather than an empty box. */
export function Empty({ children }: { children: ComponentChildren }) {
  return <p class="empty">{children}</p>;
}
