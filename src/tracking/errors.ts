/**
 * Errors of the MLflow REST client.
 *
 * - `MlflowRequestError`: the server refused the request (4xx other than 429): retrying cannot help, so
 *   its name belongs in a Temporal retry policy's `nonRetryableErrorTypes`.
 * - `MlflowUnavailableError`: the server could not be reached or kept failing (connection errors,
 *   timeouts, 429, 5xx) after every attempt of the client's own retry loop; a later retry may succeed.
 *
 * Messages name the endpoint (method and path, never the query string or the base URL's userinfo) and the
 * server's error_code and message; the auth token only ever travels in the Authorization header.
 */

export class MlflowRequestError extends Error {
  override name = 'MlflowRequestError';
  constructor(
    message: string,
    /** HTTP status. */
    public readonly status: number,
    /** MLflow `error_code` (e.g. RESOURCE_DOES_NOT_EXIST), or `HTTP_<status>` when the body had none. */
    public readonly errorCode: string,
    /** `METHOD /path`, e.g. `GET /api/2.0/mlflow/runs/get`. */
    public readonly endpoint: string,
    /** The server's own message (truncated). */
    public readonly serverMessage: string = '',
  ) {
    super(message);
  }
}

export class MlflowUnavailableError extends Error {
  override name = 'MlflowUnavailableError';
  constructor(
    message: string,
    public readonly endpoint: string,
    public readonly attempts: number,
    /** Status of the last answer, when the last attempt got one (429 or 5xx). */
    public readonly status?: number,
    public readonly errorCode?: string,
  ) {
    super(message);
  }
}

/** Names of the MLflow errors that must never be retried by a workflow's retry policy. */
export const MLFLOW_NON_RETRYABLE_ERROR_TYPES = ['MlflowRequestError'] as const;
