// Account: the profile, two-factor sign-in, passkeys, the email address, linked
// providers, sessions and the API keys (created and shown once, revoked).
import { useState } from "preact/hooks";
import { api } from "../api";
import { useLocation } from "../router";
import { addPasskey, passkeysSupported } from "../passkeys";
import { refreshMe } from "../session";
import type { Me } from "../session";
import { ErrorMessage, Field, formatDate, Notice, PageTitle, useAction, useLoad } from "../ui";

interface Session {
  id: string;
  created_at: string;
  last_used_at: string | null;
  user_agent: string | null;
  network: string | null;
  current: boolean;
}

interface Passkey {
  id: string;
  name: string;
  created_at: string;
  last_used_at: string | null;
  backed_up: boolean;
}

interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: string;
  last_used_at: string | null;
}

export function Account({ me }: { me: Me }) {
  const { query } = useLocation();
  const keys = useLoad(() => api<{ items: ApiKey[] }>("GET", "/v1/me/api-keys"));
  const [name, setName] = useState("");
  const [created, setCreated] = useState<string | null>(null);
  const create = useAction(async () => {
    const key = await api<{ key: string }>("POST", "/v1/me/api-keys", { body: { name } });
    setCreated(key.key);
    setName("");
    keys.reload();
  });
  const revoke = useAction(async (id: string) => {
    await api("DELETE", `/v1/me/api-keys/${id}`);
    keys.reload();
  });
  const [enrolment, setEnrolment] = useState<{ secret: string; otpauth_uri: string } | null>(null);
  const [totpCode, setTotpCode] = useState("");
  const startTotp = useAction(async () => {
    setEnrolment(await api<{ secret: string; otpauth_uri: string }>("POST", "/v1/me/totp"));
  });
  const confirmTotp = useAction(async () => {
    await api("POST", "/v1/me/totp/confirm", { body: { code: totpCode.trim() } });
    setEnrolment(null);
    setTotpCode("");
    await refreshMe();
  });
  const identities = useLoad(() => api<{ items: { id: string; provider: string; email: string | null; created_at: string }[] }>("GET", "/v1/me/identities"));
  const providers = useLoad(() => api<{ items: { name: string }[] }>("GET", "/v1/auth/oidc", { auth: false }));
  const unlink = useAction(async (id: string) => {
    await api("DELETE", `/v1/me/identities/${id}`);
    identities.reload();
  });
  const link = useAction(async (provider: string) => {
    const answer = await api<{ authorization_url: string }>("POST", "/v1/me/identities", {
      body: { provider, redirect_uri: `${location.origin}/oidc/callback` },
    });
    window.location.assign(answer.authorization_url);
  });
  const passkeys = useLoad(() => api<{ items: Passkey[] }>("GET", "/v1/me/passkeys"));
  const [passkeyName, setPasskeyName] = useState("");
  const [passkeyAdded, setPasskeyAdded] = useState(false);
  const createPasskey = useAction(async () => {
    setPasskeyAdded(false);
    await addPasskey(passkeyName.trim());
    setPasskeyName("");
    setPasskeyAdded(true);
    passkeys.reload();
  });
  const removePasskey = useAction(async (id: string) => {
    await api("DELETE", `/v1/me/passkeys/${id}`);
    passkeys.reload();
  });
  const sessions = useLoad(() => api<{ items: Session[] }>("GET", "/v1/me/sessions"));
  const endSession = useAction(async (id: string) => {
    await api("DELETE", `/v1/me/sessions/${id}`);
    sessions.reload();
  });
  const [newEmail, setNewEmail] = useState("");
  const [emailPassword, setEmailPassword] = useState("");
  const [emailSent, setEmailSent] = useState(false);
  const changeEmail = useAction(async () => {
    await api("POST", "/v1/me/email", { body: { new_email: newEmail, password: emailPassword } });
    setEmailSent(true);
    setEmailPassword("");
  });
  return (
    <section>
      <PageTitle>Account</PageTitle>
      {query.get("email_changed") && <Notice>Your address is changed: you sign in with {me.email} from now on.</Notice>}
      <section class="panel" aria-labelledby="profile-heading">
        <h2 id="profile-heading">Profile</h2>
        <dl>
          <dt>Email</dt>
          <dd>
            {me.email} {me.email_verified ? "(verified)" : "(not verified)"}
          </dd>
          <dt>Display name</dt>
          <dd>{me.display_name || "—"}</dd>
          <dt>Plan</dt>
          <dd>{me.plan}</dd>
          <dt>Two-factor sign-in</dt>
          <dd>{me.totp_enabled ? "on" : "off"}</dd>
        </dl>
      </section>
      <section class="panel" aria-labelledby="totp-heading">
        <h2 id="totp-heading">Two-factor sign-in</h2>
        {me.totp_enabled ? (
          <p data-testid="totp-on">On: signing in asks for a code from your authenticator app.</p>
        ) : enrolment ? (
          <form
            onSubmit={(e) => {
              e.preventDefault();
              confirmTotp.run();
            }}
          >
            <p>
              Add this key to your authenticator app (or open <a href={enrolment.otpauth_uri}>the setup link</a> on this device), then enter the code it shows.
            </p>
            <p>
              Key: <code data-testid="totp-secret">{enrolment.secret}</code>
            </p>
            <Field label="Code from the app" name="totp_confirm" inputMode="numeric" autoComplete="one-time-code" required value={totpCode} onValue={setTotpCode} />
            <ErrorMessage error={confirmTotp.error} />
            <button type="submit" disabled={confirmTotp.busy}>
              Turn on
            </button>
          </form>
        ) : (
          <>
            <p>Off. With it on, signing in and deleting your account ask for a code from an authenticator app.</p>
            <ErrorMessage error={startTotp.error} />
            <button type="button" class="secondary" disabled={startTotp.busy} onClick={() => startTotp.run()}>
              Set up two-factor sign-in
            </button>
          </>
        )}
      </section>
      <section class="panel" aria-labelledby="passkeys-heading">
        <h2 id="passkeys-heading">Passkeys</h2>
        <p>A passkey signs you in with this device's screen lock or a security key, without a password (and counts as the second step of two-factor sign-in).</p>
        <ErrorMessage error={passkeys.error || removePasskey.error} />
        {passkeys.data?.items.length === 0 && <p>None yet.</p>}
        <ul class="list">
          {(passkeys.data?.items || []).map((p) => (
            <li key={p.id} data-testid="passkey">
              <strong>{p.name}</strong> · added {formatDate(p.created_at)} · last used {formatDate(p.last_used_at)}
              {p.backed_up ? " · synced" : ""}{" "}
              <button type="button" class="danger small" onClick={() => removePasskey.run(p.id)} aria-label={`Remove passkey ${p.name}`}>
                Remove
              </button>
            </li>
          ))}
        </ul>
        {passkeysSupported() ? (
          <form
            onSubmit={(e) => {
              e.preventDefault();
              createPasskey.run();
            }}
          >
            <Field label="Name of the passkey (optional)" name="passkey_name" maxLength={100} hint="To tell your devices apart, e.g. “Laptop”." value={passkeyName} onValue={setPasskeyName} />
            <ErrorMessage error={createPasskey.error} />
            {passkeyAdded && <Notice>Passkey added: you can sign in with it now.</Notice>}
            <button type="submit" class="secondary" disabled={createPasskey.busy}>
              {createPasskey.busy ? "Waiting for your device…" : "Add a passkey"}
            </button>
          </form>
        ) : (
          <p>This browser does not support passkeys.</p>
        )}
      </section>
      <section class="panel" aria-labelledby="email-heading">
        <h2 id="email-heading">Change your email</h2>
        <form
          onSubmit={(e) => {
            e.preventDefault();
            changeEmail.run();
          }}
        >
          <Field label="New email" name="new_email" type="email" autoComplete="email" required value={newEmail} onValue={setNewEmail} />
          <Field label="Current password" name="email_password" type="password" autoComplete="current-password" required value={emailPassword} onValue={setEmailPassword} />
          <ErrorMessage error={changeEmail.error} />
          {emailSent && (
            <Notice>
              A code went to the new address: confirm it on the <a href={`/verify?email=${encodeURIComponent(newEmail)}`}>verification page</a>.
            </Notice>
          )}
          <button type="submit" class="secondary" disabled={changeEmail.busy}>
            Send a code to the new address
          </button>
        </form>
        <p>
          To change your password, use the <a href="/forgot-password">reset link</a>: it signs you out everywhere.
        </p>
      </section>
      <section class="panel" aria-labelledby="identities-heading">
        <h2 id="identities-heading">Linked sign-in providers</h2>
        <ErrorMessage error={identities.error || unlink.error || link.error} />
        {identities.data?.items.length === 0 && <p>None.</p>}
        <ul class="list">
          {(identities.data?.items || []).map((i) => (
            <li key={i.id} data-testid="identity">
              <strong>{i.provider}</strong> · {i.email || "no address"} · linked {formatDate(i.created_at)}{" "}
              <button type="button" class="danger small" onClick={() => unlink.run(i.id)} aria-label={`Unlink ${i.provider}`}>
                Unlink
              </button>
            </li>
          ))}
        </ul>
        <div class="actions">
          {(providers.data?.items || [])
            .filter((p) => !(identities.data?.items || []).some((i) => i.provider === p.name))
            .map((p) => (
              <button type="button" class="secondary" key={p.name} disabled={link.busy} onClick={() => link.run(p.name)}>
                Link {p.name === "google" ? "Google" : p.name}
              </button>
            ))}
        </div>
      </section>
      <section class="panel" aria-labelledby="sessions-heading">
        <h2 id="sessions-heading">Sessions</h2>
        <ErrorMessage error={sessions.error || endSession.error} />
        <ul class="list">
          {(sessions.data?.items || []).map((x) => (
            <li key={x.id} data-testid="session">
              {x.user_agent || "unknown browser"} · {x.network || "unknown network"} · since {formatDate(x.created_at)}
              {x.current ? (
                <strong data-testid="current-session"> · this session</strong>
              ) : (
                <>
                  {" "}
                  <button type="button" class="danger small" onClick={() => endSession.run(x.id)}>
                    Sign out this session
                  </button>
                </>
              )}
            </li>
          ))}
        </ul>
      </section>
      <section class="panel" aria-labelledby="keys-heading">
        <h2 id="keys-heading">API keys</h2>
        <ErrorMessage error={keys.error || revoke.error} />
        <ul class="list">
          {(keys.data?.items || []).map((k) => (
            <li key={k.id}>
              <strong>{k.name}</strong> · {k.prefix}… · made {formatDate(k.created_at)} · last used {formatDate(k.last_used_at)}{" "}
              <button type="button" class="danger small" onClick={() => revoke.run(k.id)} aria-label={`Revoke ${k.name}`}>
                Revoke
              </button>
            </li>
          ))}
        </ul>
        {created && (
          <Notice>
            Your new key, shown this once: <code data-testid="new-key">{created}</code>
          </Notice>
        )}
        <form
          onSubmit={(e) => {
            e.preventDefault();
            create.run();
          }}
        >
          <Field label="Key name" name="key_name" required value={name} onValue={setName} />
          <ErrorMessage error={create.error} />
          <button type="submit" disabled={create.busy}>
            Create a key
          </button>
        </form>
      </section>
    </section>
  );
}
