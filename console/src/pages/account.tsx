// Account: the profile and the API keys (created and shown once, revoked).
import { useState } from "preact/hooks";
import { api } from "../api";
import type { Me } from "../session";
import { ErrorMessage, Field, formatDate, Notice, PageTitle, useAction, useLoad } from "../ui";

interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: string;
  last_used_at: string | null;
}

export function Account({ me }: { me: Me }) {
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
  return (
    <section>
      <PageTitle>Account</PageTitle>
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
