// The layout (header, navigation, main) and the routes.
import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import { api } from "./api";
import { Account } from "./pages/account";
import { adminRoute, isAdminPath } from "./pages/admin";
import { cookieChoice, CookiePanel } from "./pages/consents";
import { ForgotPassword, Login, ResetPassword, SignUp, Verify } from "./pages/auth";
import { Billing, CheckoutCancel, CheckoutSuccess } from "./pages/billing";
import { Gallery, PublicImage } from "./pages/gallery";
import { OidcCallback } from "./pages/oidc";
import { Generate } from "./pages/generate";
import { CancelErasure, PrivacyCenter, PrivacyRequestPage } from "./pages/privacy";
import { Link, match, navigate, useLocation } from "./router";
import { Me, refreshMe, signOut, useSession } from "./session";
import { ErrorMessage, Notice, PageTitle, useAction } from "./ui";

const SIGNED_IN_NAV: [string, string][] = [
  ["/generate", "Generate"],
  ["/gallery", "Gallery"],
  ["/billing", "Credits"],
  ["/privacy", "Privacy"],
  ["/account", "Account"],
];

const SIGNED_OUT_NAV: [string, string][] = [
  ["/login", "Sign in"],
  ["/signup", "Create an account"],
];

// shown to administrators only (the pages refuse anyone else: pages/admin)
const ADMIN_NAV: [string, string] = ["/admin", "Operators"];

function Header({ me, path }: { me: Me | null; path: string }) {
  const [open, setOpen] = useState(false);
  const items = me ? (me.is_admin ? [...SIGNED_IN_NAV, ADMIN_NAV] : SIGNED_IN_NAV) : SIGNED_OUT_NAV;
  return (
    <header class="top">
      <a class="skip" href="#main">
        Skip to content
      </a>
      <Link href="/" class="brand">
        Darkroom
      </Link>
      <button type="button" class="menu secondary" aria-expanded={open} aria-controls="main-nav" onClick={() => setOpen(!open)}>
        Menu
      </button>
      <nav id="main-nav" aria-label="Main" class={open ? "open" : ""}>
        <ul onClick={() => setOpen(false)}>
          {items.map(([href, label]) => (
            <li key={href}>
              <Link href={href} aria-current={path === href || path.startsWith(href + "/") ? "page" : undefined}>
                {label}
              </Link>
            </li>
          ))}
          {me && (
            <li>
              <button
                type="button"
                class="link"
                onClick={async () => {
                  await signOut();
                  navigate("/login");
                }}
              >
                Sign out
              </button>
            </li>
          )}
        </ul>
      </nav>
    </header>
  );
}

function PolicyBanner({ me }: { me: Me }) {
  const accept = useAction(async () => {
    await api("POST", "/v1/privacy/policy/accept", { body: { version: me.policy!.current } });
    await refreshMe();
  });
  if (!me.policy?.acceptance_required) return null;
  return (
    <div class="banner" role="region" aria-label="Privacy policy update">
      <p>
        The privacy policy changed (version {me.policy.current}). Please read and accept it to go on.{" "}
        <Link href="/privacy">Privacy center</Link>
      </p>
      <ErrorMessage error={accept.error} />
      <button type="button" disabled={accept.busy} onClick={() => accept.run()}>
        Accept version {me.policy.current}
      </button>
    </div>
  );
}

function Home({ me }: { me: Me | null }) {
  return (
    <section class="narrow">
      <PageTitle>Darkroom</PageTitle>
      <p>Generate images and videos, keep them in your gallery, and stay in control of your data.</p>
      {me ? (
        <p>
          <Link href="/generate" class="button">
            Generate
          </Link>
        </p>
      ) : (
        <p class="actions">
          <Link href="/login" class="button">
            Sign in
          </Link>
          <Link href="/signup" class="button secondary">
            Create an account
          </Link>
        </p>
      )}
    </section>
  );
}

function NotFound() {
  return (
    <section class="narrow">
      <PageTitle>Page not found</PageTitle>
      <p>
        Nothing lives at this address. <Link href="/">Go to the start page</Link>.
      </p>
    </section>
  );
}

function SignInFirst({ path }: { path: string }) {
  return (
    <section class="narrow">
      <PageTitle>Sign in to continue</PageTitle>
      <p>
        This page is for signed-in people. <Link href={`/login?next=${encodeURIComponent(path + location.search)}`}>Sign in</Link> or{" "}
        <Link href="/signup">create an account</Link>.
      </p>
    </section>
  );
}

function route(path: string, me: Me | null): ComponentChildren {
  let params: Record<string, string> | null;
  switch (path) {
    case "/":
      return <Home me={me} />;
    case "/signup":
      return <SignUp />;
    case "/verify":
      return <Verify />;
    case "/login":
      return <Login />;
    case "/forgot-password":
      return <ForgotPassword />;
    case "/reset-password":
      return <ResetPassword />;
    case "/checkout/cancel":
      return <CheckoutCancel />;
    case "/oidc/callback":
      return <OidcCallback />;
  }
  if ((params = match("/public/:id", path))) return <PublicImage key={params.id} publicId={params.id} />;
  if ((params = match("/privacy/requests/:id/cancel", path))) return <CancelErasure requestId={params.id} />;
  if ((params = match("/privacy/requests/:id", path))) {
    const requestId = params.id;
    return me ? <PrivacyRequestPage key={requestId} requestId={requestId} /> : <SignInFirst path={path} />;
  }
  const signedIn: Record<string, (me: Me) => ComponentChildren> = {
    "/generate": () => <Generate />,
    "/gallery": () => <Gallery />,
    "/billing": () => <Billing />,
    "/checkout/success": () => <CheckoutSuccess />,
    "/privacy": (me) => <PrivacyCenter me={me} />,
    "/account": (me) => <Account me={me} />,
  };
  if (signedIn[path]) return me ? signedIn[path](me) : <SignInFirst path={path} />;
  if (isAdminPath(path)) {
    if (!me) return <SignInFirst path={path} />;
    const page = adminRoute(path, me);
    if (page) return page;
  }
  return <NotFound />;
}

export function App() {
  const { path } = useLocation();
  const { me, ready, error } = useSession();
  // asked once per browser, until a choice is saved; reopened from the footer
  const [cookies, setCookies] = useState(!cookieChoice().decided);
  return (
    <>
      <Header me={me} path={path} />
      <main id="main">
        {me && <PolicyBanner me={me} />}
        <ErrorMessage error={error} />
        {ready ? <div key={path}>{route(path, me)}</div> : <Notice>Loading…</Notice>}
      </main>
      {cookies && <CookiePanel onClose={() => setCookies(false)} />}
      <footer class="bottom">
        <button type="button" class="link" onClick={() => setCookies(true)}>
          Cookie preferences
        </button>{" "}
        · <a href="/v1/docs">API documentation</a>
      </footer>
    </>
  );
}
