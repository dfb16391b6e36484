// Who is signed in: the profile (GET /v1/me) behind the stored session token.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, onSessionChange, sessionToken, setSessionToken } from "./api";

export interface Me {
  id: string;
  email: string;
  email_verified: boolean;
  display_name: string | null;
  plan: string;
  totp_enabled: boolean;
  is_admin: boolean;
  processing_restricted: boolean;
  policy: { current: string | null; accepted: string | null; acceptance_required: boolean } | null;
}

let me: Me | null = null;
let loading: Promise<void> | null = null;
const listeners = new Set<() => void>();

function notify() {
  listeners.forEach((listener) => listener());
}

export async function refreshMe(): Promise<void> {
  if (!sessionToken()) {
    me = null;
    notify();
    return;
  }
  try {
    me = await api<Me>("GET", "/v1/me");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) me = null;
    else throw error;
  } finally {
    notify();
  }
}

onSessionChange(() => {
  if (!sessionToken()) {
    me = null;
    notify();
  }
});

export async function signIn(token: string) {
  setSessionToken(token);
  await refreshMe();
}

export async function signOut() {
  try {
    if (sessionToken()) await api("POST", "/v1/auth/logout");
  } catch {
    // the session is dropped here whatever the server said
  }
  setSessionToken(null);
}

/** ``{me, ready}``: ready once the first GET /v1/me has answered. */
export function useSession(): { me: Me | null; ready: boolean; error: ApiError | null } {
  const [, setVersion] = useState(0);
  const [ready, setReady] = useState(!sessionToken() || me !== null);
  const [error, setError] = useState<ApiError | null>(null);
  useEffect(() => {
    const listener = () => setVersion((n) => n + 1);
    listeners.add(listener);
    if (!ready) {
      loading = loading || refreshMe();
      loading
        .catch((e) => setError(e instanceof ApiError ? e : new ApiError(0, "error", String(e))))
        .finally(() => {
          loading = null;
          setReady(true);
        });
    }
    return () => {
      listeners.delete(listener);
    };
  }, []);
  return { me: sessionToken() ? me : null, ready, error };
}
