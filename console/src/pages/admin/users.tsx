// Users: found by (part of) their address, disabled or enabled again after a
// confirmation (disabling signs them out and revokes their API keys).
import { useEffect, useRef, useState } from "preact/hooks";
import { api, Page } from "../../api";
import { navigate, useLocation } from "../../router";
import type { Me } from "../../session";
import { ErrorMessage, Field, formatDate, Notice, useAction, useLoad } from "../../ui";
import { AdminLayout, Empty, Flag } from "./common";

interface OperatorUser {
  id: string;
  email: string;
  email_verified: boolean;
  display_name: string | null;
  plan: string;
  is_admin: boolean;
  totp_enabled: boolean;
  processing_restricted: boolean;
  disabled_at: string | null;
  sessions_active: number;
  api_keys_active: number;
  created_at: string;
}

interface Disabled {
  user_id: string;
  email: string;
  disabled: boolean;
  sessions_revoked: number;
  api_keys_revoked: number;
}

function UserItem({ initial, me }: { initial: OperatorUser; me: Me }) {
  const [user, setUser] = useState(initial);
  const [confirming, setConfirming] = useState(false);
  // the keyboard's focus follows the question: to its first answer when it opens,
  // back to the button that asked it when it closes
  const toggle = useRef<HTMLButtonElement>(null);
  const answer = useRef<HTMLButtonElement>(null);
  const opened = useRef(false);
  useEffect(() => {
    if (confirming) answer.current?.focus();
    else if (opened.current) toggle.current?.focus();
    opened.current = opened.current || confirming;
  }, [confirming]);
  const [done, setDone] = useState<string | null>(null);
  const disabled = user.disabled_at !== null;
  const change = useAction(async () => {
    setDone(null);
    const answer = await api<Disabled>("POST", `/v1/admin/users/${user.id}/${disabled ? "enable" : "disable"}`);
    setConfirming(false);
    setUser({ ...user, disabled_at: answer.disabled ? user.disabled_at || new Date().toISOString() : null, sessions_active: answer.disabled ? 0 : user.sessions_active, api_keys_active: answer.disabled ? 0 : user.api_keys_active });
    setDone(
      answer.disabled
        ? `Disabled: ${answer.sessions_revoked} session(s) ended, ${answer.api_keys_revoked} API key(s) revoked.`
        : "Enabled: they can sign in again.",
    );
  });
  const action = disabled ? "Enable" : "Disable";
  return (
    <li data-testid="admin-user" data-email={user.email}>
      <div class="row">
        <span>
          <strong>{user.email}</strong> {user.display_name && `(${user.display_name})`}
        </span>
        <span class="actions">
          {user.is_admin && <Flag kind="muted">administrator</Flag>}
          {disabled && <Flag>disabled</Flag>}
          {user.processing_restricted && <Flag kind="muted">processing restricted</Flag>}
        </span>
      </div>
      <p class="meta">
        <code>{user.id}</code> · {user.plan} · {user.email_verified ? "verified" : "not verified"} · two-factor {user.totp_enabled ? "on" : "off"} ·{" "}
        {user.sessions_active} session(s), {user.api_keys_active} API key(s) · since {formatDate(user.created_at)}
        {disabled && ` · disabled ${formatDate(user.disabled_at)}`}
      </p>
      <ErrorMessage error={change.error} />
      {done && <Notice>{done}</Notice>}
      {confirming ? (
        <div class="confirm" role="group" aria-label={`Confirm: ${action.toLowerCase()} ${user.email}`}>
          <p>
            {disabled
              ? `Enable ${user.email}? They can sign in again (their API keys stay revoked).`
              : `Disable ${user.email}? This ends their sessions and revokes their API keys at once.`}
            {!disabled && user.id === me.id && " This is your own account."}
          </p>
          <div class="actions">
            <button ref={answer} type="button" class={disabled ? "small" : "danger small"} disabled={change.busy} onClick={() => change.run()}>
              Yes, {action.toLowerCase()}
            </button>
            <button type="button" class="secondary small" onClick={() => setConfirming(false)}>
              Keep as is
            </button>
          </div>
        </div>
      ) : (
        <button
          ref={toggle}
          type="button"
          class={disabled ? "secondary small" : "danger small"}
          onClick={() => setConfirming(true)}
          aria-label={`${action} ${user.email}`}
        >
          {action}…
        </button>
      )}
    </li>
  );
}

export function AdminUsers({ path, me }: { path: string; me: Me }) {
  const { query } = useLocation();
  const email = query.get("email") || "";
  const [search, setSearch] = useState(email);
  const [cursor, setCursor] = useState("");
  const [earlier, setEarlier] = useState<OperatorUser[]>([]);
  const users = useLoad(() => api<Page<OperatorUser>>("GET", "/v1/admin/users", { query: { email, cursor, limit: 25 } }), [email, cursor]);
  const items = [...earlier, ...(users.data?.items || [])];
  return (
    <AdminLayout title="Users" path={path}>
      <form
        class="inline-form"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setEarlier([]);
          setCursor("");
          users.setData(null); // no stale answer shown as this search's
          const value = search.trim();
          if (value === email && !cursor) users.reload();
          else navigate(value ? `/admin/users?email=${encodeURIComponent(value)}` : "/admin/users", { replace: true });
        }}
      >
        <Field label="Email (part or whole)" name="email" type="search" value={search} onValue={setSearch} />
        <button type="submit">Find</button>
      </form>
      <ErrorMessage error={users.error} />
      {users.data && items.length === 0 && <Empty>No account{email ? ` with an address containing “${email}”` : ""}.</Empty>}
      <ul class="list" aria-label="Users">
        {items.map((u) => (
          <UserItem key={u.id} initial={u} me={me} />
        ))}
      </ul>
      {users.data?.next_cursor && (
        <div class="pager">
          <button
            type="button"
            class="secondary"
            onClick={() => {
              setEarlier(items);
              users.setData(null);
              setCursor(users.data!.next_cursor!);
            }}
          >
            More
          </button>
        </div>
      )}
    </AdminLayout>
  );
}
