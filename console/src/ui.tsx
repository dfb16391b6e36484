// The pieces every page uses: errors from the API, form fields, busy buttons.
import type { ComponentChildren, JSX } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";

/** ``details.fields`` as ``[["inputs.theme", "Missing data…"], …]``: nested
 * objects (a template's inputs, a list's items) become dotted names. */
function flattenFields(fields: unknown, prefix = ""): [string, string][] {
  if (Array.isArray(fields) && fields.every((m) => typeof m !== "object" || m === null)) {
    return [[prefix || "request", fields.join(" ")]];
  }
  if (fields && typeof fields === "object") {
    return Object.entries(fields as Record<string, unknown>).flatMap(([name, value]) =>
      flattenFields(value, prefix ? `${prefix}.${name}` : name),
    );
  }
  return [[prefix || "request", String(fields)]];
}

export function ErrorMessage({ error }: { error: unknown }) {
  if (!error) return null;
  const apiError =
    error instanceof ApiError ? error : new ApiError(0, "error", error instanceof Error ? error.message : String(error));
  const fields = apiError.details?.fields ? flattenFields(apiError.details.fields) : null;
  return (
    <div class="error" role="alert">
      <strong>{apiError.message}</strong> <code class="error-code">{apiError.code}</code>
      {fields && (
        <ul>
          {fields.map(([name, message]) => (
            <li key={name}>
              {name}: {message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function Notice({ children }: { children: ComponentChildren }) {
  return (
    <div class="notice" role="status">
      {children}
    </div>
  );
}

type FieldProps = Omit<JSX.InputHTMLAttributes<HTMLInputElement>, "value"> & {
  label: string;
  name: string;
  hint?: string;
  value?: string;
  onValue?: (value: string) => void;
};

export function Field({ label, name, hint, value, onValue, ...rest }: FieldProps) {
  const id = `field-${name}`;
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <input
        id={id}
        name={name}
        value={value}
        onInput={(e) => onValue && onValue((e.target as HTMLInputElement).value)}
        aria-describedby={hint ? `${id}-hint` : undefined}
        {...rest}
      />
      {hint && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
    </div>
  );
}

/** Runs an async action with a busy flag and its error kept for display. */
export function useAction<A extends unknown[]>(action: (...args: A) => Promise<void>) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const run = async (...args: A) => {
    setBusy(true);
    setError(null);
    try {
      await action(...args);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, run, setError };
}

/** Loads data for a page; ``reload`` asks again. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[] = []) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [version, setVersion] = useState(0);
  useEffect(() => {
    let live = true;
    setError(null);
    load()
      .then((value) => live && setData(value))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [...deps, version]);
  return { data, error, reload: () => setVersion((n) => n + 1), setData };
}

/** The page's heading, focused when the page opens so screen readers announce it. */
export function PageTitle({ children }: { children: ComponentChildren }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    const text = ref.current?.textContent;
    if (text) document.title = `${text} · Darkroom`;
    ref.current?.focus();
  }, []);
  return (
    <h1 ref={ref} tabIndex={-1}>
      {children}
    </h1>
  );
}

export function formatDate(value: string | null | undefined): string {
  if (!value) return "—";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}
