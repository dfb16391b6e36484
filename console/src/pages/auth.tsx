// Sign-up (with the policy and, when the API asks for it, the age gate),
// email verification, sign-in, and the password reset the mail links to.
import { useState } from "preact/hooks";
import { api, ApiError, sessionToken } from "../api";
import { Link, navigate, useLocation } from "../router";
import { passkeySignIn, passkeysSupported } from "../passkeys";
import { refreshMe, signIn } from "../session";
import { syncCookieChoice } from "./consents";
import { ProviderButtons } from "./oidc";
import { ErrorMessage, Field, Notice, PageTitle, useAction, useLoad } from "../ui";

export const PENDING_POLICY_KEY = "darkroom.policy-accepted";

interface Policy {
  version: string;
  material: boolean;
  summary: string;
  published_at: string;
}

export function SignUp() {
  const policy = useLoad(() =>
    api<Policy>("GET", "/v1/privacy/policy", { auth: false }).catch((e) => {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }),
  );
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [accepted, setAccepted] = useState(false);
  const [ageField, setAgeField] = useState<"birth_date" | "age_confirmed" | null>(null);
  const [birthDate, setBirthDate] = useState("");
  const action = useAction(async () => {
    const body: Record<string, unknown> = { email, password };
    if (displayName) body.display_name = displayName;
    if (ageField && birthDate) body.birth_date = birthDate;
    try {
      await api("POST", "/v1/auth/register", { body, auth: false });
    } catch (e) {
      if (e instanceof ApiError && e.code === "age_required") {
        setAgeField("birth_date");
      }
      throw e;
    }
    if (policy.data) sessionStorage.setItem(PENDING_POLICY_KEY, policy.data.version);
    navigate(`/verify?email=${encodeURIComponent(email)}`);
  });
  return (
    <section class="narrow">
      <PageTitle>Create an account</PageTitle>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          action.run();
        }}
      >
        <Field label="Email" name="email" type="email" autoComplete="email" required value={email} onValue={setEmail} />
        <Field
          label="Password"
          name="password"
          type="password"
          autoComplete="new-password"
          required
          minLength={10}
          hint="At least 10 characters, not a common password."
          value={password}
          onValue={setPassword}
        />
        <Field label="Display name (optional)" name="display_name" autoComplete="nickname" value={displayName} onValue={setDisplayName} />
        {ageField && (
          <Field
            label="Date of birth"
            name="birth_date"
            type="date"
            required
            hint="This service has a minimum age. The date is checked and not kept."
            value={birthDate}
            onValue={setBirthDate}
          />
        )}
        <fieldset class="policy">
          <legend>Privacy policy</legend>
          <ErrorMessage error={policy.error} />
          {policy.data ? (
            <div class="policy-text" tabIndex={0} aria-label="Privacy policy summary">
              <p>
                Version <strong>{policy.data.version}</strong>
              </p>
              <p class="pre">{policy.data.summary}</p>
            </div>
          ) : (
            !policy.error && <p>No privacy policy has been published yet.</p>
          )}
          <label class="check">
            <input type="checkbox" name="accept_policy" required checked={accepted} onChange={(e) => setAccepted((e.target as HTMLInputElement).checked)} />
            I have read and accept the privacy policy
          </label>
        </fieldset>
        <ErrorMessage error={action.error} />
        <button type="submit" disabled={action.busy}>
          {action.busy ? "Creating…" : "Create account"}
        </button>
      </form>
      <p>
        Already have an account? <Link href="/login">Sign in</Link>
      </p>
    </section>
  );
}

export function Verify() {
  const { query } = useLocation();
  const [email, setEmail] = useState(query.get("email") || "");
  const [code, setCode] = useState("");
  const [resent, setResent] = useState(false);
  const action = useAction(async () => {
    await api("POST", "/v1/auth/verify-email", { body: { email, code: code.trim() }, auth: false });
    if (sessionToken()) {
      // signed in: the code confirmed a change of address (POST /v1/me/email)
      await refreshMe();
      navigate("/account?email_changed=1", { replace: true });
      return;
    }
    navigate(`/login?email=${encodeURIComponent(email)}&verified=1`);
  });
  const resend = useAction(async () => {
    await api("POST", "/v1/auth/resend-verification", { body: { email }, auth: false });
    setResent(true);
  });
  return (
    <section class="narrow">
      <PageTitle>Verify your email</PageTitle>
      <p>We sent a 6-digit code to your address. It is valid for 15 minutes.</p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          action.run();
        }}
      >
        <Field label="Email" name="email" type="email" autoComplete="email" required value={email} onValue={setEmail} />
        <Field label="Code" name="code" inputMode="numeric" autoComplete="one-time-code" required pattern="[0-9]{6}" value={code} onValue={setCode} />
        <ErrorMessage error={action.error || resend.error} />
        {resent && <Notice>If that address waits for verification, a new code is on its way.</Notice>}
        <div class="actions">
          <button type="submit" disabled={action.busy}>
            Verify
          </button>
          <button type="button" class="secondary" disabled={resend.busy || !email} onClick={() => resend.run()}>
            Send a new code
          </button>
        </div>
      </form>
    </section>
  );
}

export function Login() {
  const { query } = useLocation();
  const [email, setEmail] = useState(query.get("email") || "");
  const [password, setPassword] = useState("");
  const [totp, setTotp] = useState("");
  const [needTotp, setNeedTotp] = useState(false);
  const action = useAction(async () => {
    const body: Record<string, string> = { email, password };
    if (needTotp && totp) body.totp_code = totp.trim();
    try {
      const answer = await api<{ token: string }>("POST", "/v1/auth/login", { body, auth: false });
      await signIn(answer.token);
    } catch (e) {
      if (e instanceof ApiError && e.code === "totp_required") setNeedTotp(true);
      throw e;
    }
    await signedIn();
  });
  // a passkey is a way in by itself (and an administrator's second factor)
  const passkey = useAction(async () => {
    await signIn(await passkeySignIn());
    await signedIn();
  });
  const signedIn = async () => {
    const pending = sessionStorage.getItem(PENDING_POLICY_KEY);
    if (pending) {
      sessionStorage.removeItem(PENDING_POLICY_KEY);
      await api("POST", "/v1/privacy/policy/accept", { body: { version: pending } }).catch(() => undefined);
      await refreshMe(); // the profile now says the policy is accepted
    }
    await syncCookieChoice().catch(() => undefined); // the choice made before sign-in
    const next = query.get("next");
    navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/generate", { replace: true });
  };
  return (
    <section class="narrow">
      <PageTitle>Sign in</PageTitle>
      {query.get("verified") && <Notice>Your address is verified. Sign in to continue.</Notice>}
      {query.get("reset") && <Notice>Your password was changed. Sign in with the new one.</Notice>}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          action.run();
        }}
      >
        <Field label="Email" name="email" type="email" autoComplete="username" required value={email} onValue={setEmail} />
        <Field label="Password" name="password" type="password" autoComplete="current-password" required value={password} onValue={setPassword} />
        {needTotp && (
          <Field label="Authenticator code" name="totp_code" inputMode="numeric" autoComplete="one-time-code" required value={totp} onValue={setTotp} />
        )}
        <ErrorMessage error={action.error} />
        <button type="submit" disabled={action.busy}>
          {action.busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      {passkeysSupported() && (
        <div class="actions">
          <button type="button" class="secondary" disabled={passkey.busy} onClick={() => passkey.run()}>
            {passkey.busy ? "Waiting for your passkey…" : "Use a passkey"}
          </button>
        </div>
      )}
      <ErrorMessage error={passkey.error} />
      <ProviderButtons />
      <p>
        <Link href="/forgot-password">Forgot your password?</Link> · <Link href="/signup">Create an account</Link> ·{" "}
        <Link href="/verify">Enter a verification code</Link>
      </p>
    </section>
  );
}

export function ForgotPassword() {
  const [email, setEmail] = useState("");
  const [sent, setSent] = useState(false);
  const action = useAction(async () => {
    await api("POST", "/v1/auth/password-reset", { body: { email }, auth: false });
    setSent(true);
  });
  return (
    <section class="narrow">
      <PageTitle>Reset your password</PageTitle>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          action.run();
        }}
      >
        <Field label="Email" name="email" type="email" autoComplete="email" required value={email} onValue={setEmail} />
        <ErrorMessage error={action.error} />
        {sent && <Notice>If an account has that address, a reset link is on its way. It is valid for 60 minutes.</Notice>}
        <button type="submit" disabled={action.busy}>
          Send the link
        </button>
      </form>
    </section>
  );
}

export function ResetPassword() {
  const { query } = useLocation();
  const token = query.get("token") || "";
  const [password, setPassword] = useState("");
  const action = useAction(async () => {
    await api("POST", "/v1/auth/password-reset/confirm", { body: { token, new_password: password }, auth: false });
    navigate("/login?reset=1", { replace: true });
  });
  return (
    <section class="narrow">
      <PageTitle>Choose a new password</PageTitle>
      {!token && <ErrorMessage error={new ApiError(400, "invalid_token", "This page needs the link from the reset mail.")} />}
      <p>Changing it signs you out everywhere and revokes your API keys.</p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          action.run();
        }}
      >
        <Field
          label="New password"
          name="new_password"
          type="password"
          autoComplete="new-password"
          required
          minLength={10}
          value={password}
          onValue={setPassword}
        />
        <ErrorMessage error={action.error} />
        <button type="submit" disabled={action.busy || !token}>
          Change password
        </button>
      </form>
    </section>
  );
}
