// Passkeys (WebAuthn) between the API and the browser. The API speaks the
// JSON forms of the WebAuthn spec (docs/api.md: PublicKeyCredentialCreationOptionsJSON
// and ...RequestOptionsJSON in, RegistrationResponseJSON and AuthenticationResponseJSON
// back), where every binary value is base64url without padding; the browser's
// navigator.credentials wants and gives ArrayBuffers. The conversion is done
// here by hand, so it works in browsers without PublicKeyCredential.parse*FromJSON.
import { api, ApiError } from "./api";

export function fromBase64url(text: string): ArrayBuffer {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

export function toBase64url(buffer: ArrayBuffer | ArrayBufferView): string {
  const bytes = buffer instanceof ArrayBuffer ? new Uint8Array(buffer) : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function passkeysSupported(): boolean {
  return typeof window !== "undefined" && !!window.PublicKeyCredential && !!navigator.credentials;
}

function descriptors(list: any[] | undefined): PublicKeyCredentialDescriptor[] | undefined {
  return list?.map((d) => ({ ...d, id: fromBase64url(d.id) }));
}

/** The browser's refusal (the person cancelled, no authenticator, wrong
 * origin) as an ApiError the pages show like any other, with a code. */
function browserError(error: unknown): ApiError {
  const name = error instanceof DOMException ? error.name : "";
  if (name === "NotAllowedError" || name === "AbortError") {
    return new ApiError(0, "passkey_cancelled", "The passkey request was cancelled or timed out.");
  }
  if (name === "InvalidStateError") {
    return new ApiError(0, "passkey_exists", "This device already holds a passkey of your account.");
  }
  if (name === "SecurityError") {
    return new ApiError(0, "passkey_unavailable", "This browser refuses passkeys for this address (it needs https or localhost).");
  }
  return new ApiError(0, "passkey_failed", error instanceof Error ? error.message : String(error));
}

function unsupported(): ApiError {
  return new ApiError(0, "passkey_unsupported", "This browser does not support passkeys.");
}

/** Asks the browser (``call``) for a credential; its refusal becomes an ApiError. */
async function ask(call: () => Promise<Credential | null>): Promise<PublicKeyCredential> {
  if (!passkeysSupported()) throw unsupported();
  let credential: Credential | null;
  try {
    credential = await call();
  } catch (error) {
    throw browserError(error);
  }
  if (!credential) throw browserError(null);
  return credential as PublicKeyCredential;
}

/** What both answers' JSON forms have, beside their ``response``. */
function answer(credential: PublicKeyCredential, response: Record<string, unknown>): Record<string, unknown> {
  return {
    id: credential.id,
    rawId: toBase64url(credential.rawId),
    type: credential.type,
    authenticatorAttachment: credential.authenticatorAttachment ?? undefined,
    clientExtensionResults: credential.getClientExtensionResults(),
    response,
  };
}

/** navigator.credentials.create() with the options of POST /v1/me/passkeys/options,
 * answered as RegistrationResponseJSON. */
export async function createPasskey(options: any): Promise<Record<string, unknown>> {
  const publicKey: PublicKeyCredentialCreationOptions = {
    ...options,
    challenge: fromBase64url(options.challenge),
    user: { ...options.user, id: fromBase64url(options.user.id) },
    excludeCredentials: descriptors(options.excludeCredentials),
  };
  const credential = await ask(() => navigator.credentials.create({ publicKey }));
  const response = credential.response as AuthenticatorAttestationResponse;
  return answer(credential, {
    clientDataJSON: toBase64url(response.clientDataJSON),
    attestationObject: toBase64url(response.attestationObject),
    transports: typeof response.getTransports === "function" ? response.getTransports() : [],
  });
}

/** navigator.credentials.get() with the options of POST /v1/auth/passkey/options,
 * answered as AuthenticationResponseJSON. */
export async function getPasskey(options: any): Promise<Record<string, unknown>> {
  const publicKey: PublicKeyCredentialRequestOptions = {
    ...options,
    challenge: fromBase64url(options.challenge),
    allowCredentials: descriptors(options.allowCredentials),
  };
  const credential = await ask(() => navigator.credentials.get({ publicKey }));
  const response = credential.response as AuthenticatorAssertionResponse;
  return answer(credential, {
    clientDataJSON: toBase64url(response.clientDataJSON),
    authenticatorData: toBase64url(response.authenticatorData),
    signature: toBase64url(response.signature),
    userHandle: response.userHandle ? toBase64url(response.userHandle) : undefined,
  });
}

/** Signs in with a passkey: options, the browser's answer, a session token. */
export async function passkeySignIn(): Promise<string> {
  const { options } = await api<{ options: any }>("POST", "/v1/auth/passkey/options", { auth: false });
  const credential = await getPasskey(options);
  const answer = await api<{ token: string }>("POST", "/v1/auth/passkey/login", { body: { credential }, auth: false });
  return answer.token;
}

/** Adds a passkey to the signed-in account, named ``name`` (optional). */
export async function addPasskey(name: string): Promise<void> {
  const { options } = await api<{ options: any }>("POST", "/v1/me/passkeys/options");
  const credential = await createPasskey(options);
  await api("POST", "/v1/me/passkeys", { body: name ? { credential, name } : { credential } });
}
