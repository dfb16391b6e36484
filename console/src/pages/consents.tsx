// The privacy center's choices and records: consents and refused processing
// regions, the policy versions, "where my data went" (the disclosure log);
// and the cookie preferences panel, remembered in this browser before sign-in
// and stored per account (the consents' preferences and analytics) after.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, Page, sessionToken } from "../api";
import { refreshMe } from "../session";
import type { Me } from "../session";
import { ErrorMessage, formatDate, Notice, useAction, useLoad } from "../ui";

interface Consents {
  marketing_email: boolean;
  analytics: boolean;
  preferences: boolean;
  refused_regions: string[];
  updated_at: string | null;
  history: { purpose: string; granted: boolean; source: string; policy_version: string | null; changed_at: string }[];
}

interface Disclosure {
  id: string;
  job_id: string;
  provider: string;
  region: string | null;
  categories: string[];
  outcome: string;
  error_code: string | null;
  created_at: string;
}

export function ConsentsPanel() {
  const consents = useLoad(() => api<Consents>("GET", "/v1/privacy/consents"));
  const [regions, setRegions] = useState("");
  const [saved, setSaved] = useState(false);
  const loaded = consents.data !== null;
  useEffect(() => {
    // filled once from what is stored; then it is the person's text until saved
    if (consents.data) setRegions(consents.data.refused_regions.join(", "));
  }, [loaded]);
  const save = useAction(async (change: Partial<Consents>) => {
    setSaved(false);
    if (consents.data && !("refused_regions" in change)) consents.setData({ ...consents.data, ...change }); // shown at once
    try {
      consents.setData(await api<Consents>("PUT", "/v1/privacy/consents", { body: change }));
    } catch (e) {
      consents.reload(); // back to what is stored
      throw e;
    }
    for (const category of COOKIE_CATEGORIES) {
      if (category in change) rememberCookieChoice({ ...cookieChoice(), [category]: Boolean(change[category]) });
    }
    setSaved(true);
  });
  const data = consents.data;
  return (
    <section class="panel" aria-labelledby="consents-heading">
      <h2 id="consents-heading">Consents</h2>
      <ErrorMessage error={consents.error || save.error} />
      {data && (
        <>
          <label class="check">
            <input type="checkbox" name="marketing_email" checked={data.marketing_email} onChange={(e) => save.run({ marketing_email: (e.target as HTMLInputElement).checked })} />
            News and offers by email
          </label>
          <label class="check">
            <input type="checkbox" name="analytics" checked={data.analytics} onChange={(e) => save.run({ analytics: (e.target as HTMLInputElement).checked })} />
            Usage analytics
          </label>
          <label class="check">
            <input type="checkbox" name="preferences" checked={data.preferences} onChange={(e) => save.run({ preferences: (e.target as HTMLInputElement).checked })} />
            Preference cookies (settings such as your last filters)
          </label>
          <form
            onSubmit={(e) => {
              e.preventDefault();
              save.run({ refused_regions: regions.split(/[\s,]+/).filter(Boolean) });
            }}
          >
            <div class="field">
              <label for="field-regions">Regions where my data must not be processed</label>
              <input id="field-regions" name="refused_regions" value={regions} onInput={(e) => setRegions((e.target as HTMLInputElement).value)} aria-describedby="field-regions-hint" />
              <p class="hint" id="field-regions-hint">
                Region names separated by commas, e.g. <code>us, cn</code>. Models in those regions are skipped.
              </p>
            </div>
            <button type="submit" class="secondary" disabled={save.busy}>
              Save regions
            </button>
          </form>
          {saved && <Notice>Saved.</Notice>}
          <details>
            <summary>History of your choices</summary>
            <ul class="list">
              {data.history.map((h, i) => (
                <li key={i}>
                  {formatDate(h.changed_at)} · {h.purpose} {h.granted ? "granted" : "withdrawn"} ({h.source})
                </li>
              ))}
            </ul>
          </details>
        </>
      )}
    </section>
  );
}

export function PolicyPanel({ me }: { me: Me }) {
  const policy = useLoad(() =>
    api<{ version: string; summary: string; published_at: string; material: boolean }>("GET", "/v1/privacy/policy", { auth: false }).catch((e) => {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }),
  );
  const accept = useAction(async (version: string) => {
    await api("POST", "/v1/privacy/policy/accept", { body: { version } });
    await refreshMe();
  });
  return (
    <section class="panel" aria-labelledby="policy-heading">
      <h2 id="policy-heading">Privacy policy</h2>
      <ErrorMessage error={policy.error || accept.error} />
      {policy.data ? (
        <>
          <p>
            Current version <strong>{policy.data.version}</strong>, published {formatDate(policy.data.published_at)}
            {policy.data.material ? " (a material change)" : ""}.
          </p>
          <p class="pre">{policy.data.summary}</p>
          <p>
            You accepted: <strong data-testid="policy-accepted">{me.policy?.accepted || "none yet"}</strong>
          </p>
          {me.policy?.acceptance_required && (
            <button type="button" disabled={accept.busy} onClick={() => accept.run(policy.data!.version)}>
              Accept version {policy.data.version}
            </button>
          )}
        </>
      ) : (
        !policy.error && <p>No policy has been published.</p>
      )}
    </section>
  );
}

export function DisclosuresPanel() {
  const [cursor, setCursor] = useState("");
  const page = useLoad(() => api<Page<Disclosure>>("GET", "/v1/privacy/disclosures", { query: { limit: 10, cursor } }), [cursor]);
  return (
    <section class="panel" aria-labelledby="disclosures-heading">
      <h2 id="disclosures-heading">Where my data went</h2>
      <p>Each request sent to a model vendor for your jobs: what it carried and where it was processed.</p>
      <ErrorMessage error={page.error} />
      {page.data?.items.length === 0 && <p>Nothing was sent to a vendor.</p>}
      <ul class="list">
        {(page.data?.items || []).map((d) => (
          <li key={d.id} data-testid="disclosure">
            {formatDate(d.created_at)} · <strong>{d.provider}</strong> · region {d.region || "not stated"} · {d.categories.join(", ")} · {d.outcome}
            {d.error_code ? ` (${d.error_code})` : ""}
          </li>
        ))}
      </ul>
      {page.data?.next_cursor && (
        <button type="button" class="secondary" onClick={() => setCursor(page.data!.next_cursor!)}>
          Older
        </button>
      )}
    </section>
  );
}

// ---- cookie preferences

const COOKIE_KEY = "darkroom.cookie-preferences";
const COOKIE_CHOSEN_EVENT = "darkroom:cookie-choice";
// the cookie panel's categories that are also the account's consents
const COOKIE_CATEGORIES = ["preferences", "analytics"] as const;

export interface CookieChoice {
  preferences: boolean;
  analytics: boolean;
  decided: boolean;
}

export function cookieChoice(): CookieChoice {
  try {
    const stored = JSON.parse(localStorage.getItem(COOKIE_KEY) || "null");
    if (stored && typeof stored === "object") {
      return { preferences: Boolean(stored.preferences), analytics: Boolean(stored.analytics), decided: true };
    }
  } catch {
    // an unreadable choice is no choice
  }
  return { preferences: false, analytics: false, decided: false };
}

function rememberCookieChoice(choice: CookieChoice) {
  localStorage.setItem(COOKIE_KEY, JSON.stringify({ preferences: choice.preferences, analytics: choice.analytics }));
}

/** After sign-in: the choice made in this browser before becomes the account's;
 * with none made here, the account's stored choice (if it has one) is this
 * browser's too, and the panel is not asked again. */
export async function syncCookieChoice() {
  if (!sessionToken()) return;
  const choice = cookieChoice();
  const consents = await api<Consents>("GET", "/v1/privacy/consents");
  if (choice.decided) {
    const change: Partial<Record<(typeof COOKIE_CATEGORIES)[number], boolean>> = {};
    for (const category of COOKIE_CATEGORIES) {
      if (consents[category] !== choice[category]) change[category] = choice[category];
    }
    if (Object.keys(change).length) await api("PUT", "/v1/privacy/consents", { body: change });
  } else if (consents.history.some((h) => (COOKIE_CATEGORIES as readonly string[]).includes(h.purpose))) {
    rememberCookieChoice({ preferences: consents.preferences, analytics: consents.analytics, decided: true });
    window.dispatchEvent(new Event(COOKIE_CHOSEN_EVENT));
  }
}

export function CookiePanel({ onClose }: { onClose: () => void }) {
  const initial = cookieChoice();
  const [preferences, setPreferences] = useState(initial.preferences);
  const [analytics, setAnalytics] = useState(initial.analytics);
  useEffect(() => {
    // the account's stored choice, adopted at sign-in, answers the panel
    window.addEventListener(COOKIE_CHOSEN_EVENT, onClose);
    return () => window.removeEventListener(COOKIE_CHOSEN_EVENT, onClose);
  }, [onClose]);
  const save = useAction(async (choice: { preferences: boolean; analytics: boolean }) => {
    rememberCookieChoice({ ...choice, decided: true });
    if (sessionToken()) await api("PUT", "/v1/privacy/consents", { body: choice });
    onClose();
  });
  return (
    <section class="cookie-panel" role="dialog" aria-modal="false" aria-labelledby="cookie-heading">
      <h2 id="cookie-heading">Cookie preferences</h2>
      <p>This console stores only what you allow here, in this browser and, once you sign in, with your account.</p>
      <label class="check">
        <input type="checkbox" checked disabled name="necessary" />
        Necessary: your sign-in and these choices (always on)
      </label>
      <label class="check">
        <input type="checkbox" name="preferences" checked={preferences} onChange={(e) => setPreferences((e.target as HTMLInputElement).checked)} />
        Preferences: remember settings such as your last filters
      </label>
      <label class="check">
        <input type="checkbox" name="analytics" checked={analytics} onChange={(e) => setAnalytics((e.target as HTMLInputElement).checked)} />
        Analytics: count how the console is used
      </label>
      <ErrorMessage error={save.error} />
      <div class="actions">
        <button type="button" disabled={save.busy} onClick={() => save.run({ preferences, analytics })}>
          Save my choices
        </button>
        <button type="button" class="secondary" disabled={save.busy} onClick={() => save.run({ preferences: false, analytics: false })}>
          Necessary only
        </button>
      </div>
    </section>
  );
}
