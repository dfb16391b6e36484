// Sign-in with Google or another OpenID provider: the buttons (GET
// /v1/auth/oidc), and the page the gateway's callback sends the browser back
// to with a one-time code, traded for a session (the age asked when the
// API needs it for a new account).
import { useEffect, useState } from "preact/hooks";
import { api, ApiError } from "../api";
import { navigate, useLocation } from "../router";
import { signIn } from "../session";
import { ErrorMessage, Field, Notice, PageTitle, useAction, useLoad } from "../ui";

const CALLBACK = "/oidc/callback";

const PROVIDER_ERRORS: Record<string, string> = {
  link_required: "An account already has this address. Sign in with your password, then link the provider from your account.",
  identity_taken: "That provider account is linked to another account.",
  oidc_denied: "The sign-in was refused or cancelled at the provider.",
  oidc_email_required: "The provider did not share an email address.",
  oidc_invalid_token: "The provider's answer could not be verified.",
  oidc_provider_unavailable: "The provider did not answer. Try again later.",
};

export function ProviderButtons() {
  const providers = useLoad(() => api<{ items: { name: string }[] }>("GET", "/v1/auth/oidc", { auth: false }));
  const items = providers.data?.items || [];
  if (!items.length) return null;
  const redirect = encodeURIComponent(`${location.origin}${CALLBACK}`);
  return (
    <div class="providers" role="group" aria-label="Sign in with a provider">
      {items.map((p) => (
        <a key={p.name} class="button secondary" href={`/v1/auth/oidc/${encodeURIComponent(p.name)}/start?redirect_uri=${redirect}`}>
          Continue with {p.name === "google" ? "Google" : p.name}
        </a>
      ))}
    </div>
  );
}

export function OidcCallback() {
  const { query } = useLocation();
  const code = query.get("code") || "";
  const providerError = query.get("error");
  const [needAge, setNeedAge] = useState(false);
  const [birthDate, setBirthDate] = useState("");
  const exchange = useAction(async (body: Record<string, string>) => {
    try {
      const answer = await api<{ token: string }>("POST", "/v1/auth/oidc/exchange", { body, auth: false });
      await signIn(answer.token);
      navigate("/generate", { replace: true });
    } catch (e) {
      if (e instanceof ApiError && e.code === "age_required") {
        setNeedAge(true);
        return;
      }
      throw e;
    }
  });
  useEffect(() => {
    if (code && !providerError) exchange.run({ code });
  }, []);
  const error = providerError
    ? new ApiError(400, providerError, PROVIDER_ERRORS[providerError] || "The provider sign-in failed.")
    : exchange.error;
  return (
    <section class="narrow">
      <PageTitle>Signing in</PageTitle>
      <ErrorMessage error={error} />
      {!code && !providerError && <ErrorMessage error={new ApiError(400, "oidc_invalid_code", "This page needs the provider's answer.")} />}
      {needAge ? (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            exchange.run({ code, birth_date: birthDate });
          }}
        >
          <p>This service has a minimum age. Your date of birth is checked and not kept.</p>
          <Field label="Date of birth" name="birth_date" type="date" required value={birthDate} onValue={setBirthDate} />
          <button type="submit" disabled={exchange.busy}>
            Continue
          </button>
        </form>
      ) : (
        exchange.busy && <Notice>Signing you in…</Notice>
      )}
    </section>
  );
}
