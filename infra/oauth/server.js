// The OAuth2 authorization server for orderflow's local runs and tests: oidc-provider issuing JWT access tokens
// for the audience `orderflow`, through two grants:
//   - client credentials, for the service clients (sales-client, delivery-staff, analyst, admin);
//   - authorization code + PKCE (S256, required), for people signing in to delivery-api's web console
//     (`/console`) through the confidential client `delivery-console`. The login page is served here
//     (/interaction/:uid); consent is never asked: a user is granted the requested scopes that both the user
//     and the client may have.
//
// DEV ONLY. The clients, users, secrets and passwords below are public, and tokens, sessions and grants, like
// everything else, live in memory. Production points OAUTH_ISSUER at a real authorization server (Keycloak,
// Auth0, ...).
//
//   node server.js                  serve (started by `bash infra/scripts/oauth.sh start`)
//   node server.js --generate-jwks  print a fresh private JWK set, for OAUTH_JWKS_FILE
//
// Environment:
//   OAUTH_HOST                   address to bind (default 127.0.0.1)
//   OAUTH_PORT                   port (default 9000)
//   OAUTH_SERVER_ISSUER          the issuer URL it announces and puts in `iss` (default http://127.0.0.1:<port>);
//                                must be exactly what the APIs are given as OAUTH_ISSUER
//   OAUTH_JWKS_FILE              a private JWK set ({"keys": [...]}) to sign with; by default fresh keys are
//                                generated at every start. Restarting with another file (or without one) rotates
//                                the keys.
//   OAUTH_CONSOLE_REDIRECT_URIS  the redirect URIs of `delivery-console`, space-separated, compared exactly
//                                (default http://127.0.0.1:8081/console/callback)

import { createHmac, createPrivateKey, generateKeyPairSync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

// The audience of the Sales and Delivery APIs (their OAUTH_AUDIENCE).
const AUDIENCE = 'orderflow';
// RFC 8707 resource indicators must be absolute URIs, so the APIs are the resource `urn:orderflow`; its tokens
// carry `aud: orderflow`. Clients need not send `resource`: it is the default.
const RESOURCE = 'urn:orderflow';
// Every scope the APIs know. Declaring them makes oidc-provider enforce each client's allow-list (`scope` below):
// a scope it does not know would not be refused, only dropped.
const API_SCOPES = ['orders:read', 'orders:write', 'shipments:read', 'shipments:write', 'admin'];
const TOKEN_TTL_SECONDS = 60 * 60;
const SESSION_TTL_SECONDS = 8 * 60 * 60;
const DEFAULT_CONSOLE_REDIRECT_URIS = 'http://127.0.0.1:8081/console/callback';

// Dev-only clients, the same as `orderflow dev`'s built-in issuer has. The secrets are not secret.
const SERVICE_CLIENTS = [
  { client_id: 'sales-client', client_secret: 'dev-secret-sales', scope: 'orders:read orders:write' },
  { client_id: 'delivery-staff', client_secret: 'dev-secret-delivery', scope: 'shipments:read shipments:write' },
  { client_id: 'analyst', client_secret: 'dev-secret-analyst', scope: 'orders:read shipments:read' },
  { client_id: 'admin', client_secret: 'dev-secret-admin', scope: API_SCOPES.join(' ') },
].map((client) => ({
  ...client,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
}));

/** The web console's client: people sign in with the authorization-code grant and PKCE (see `pkce` below). */
function consoleClient(redirectUris) {
  return {
    client_id: 'delivery-console',
    client_secret: 'dev-secret-console',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    scope: 'shipments:read shipments:write',
    redirect_uris: redirectUris,
  };
}

// Dev-only users of the console (the account id, and so the tokens' `sub`, is the username). Public passwords.
const USERS = new Map([
  ['staff', { password: 'dev-password-staff', scope: 'shipments:read shipments:write' }],
  ['viewer', { password: 'dev-password-viewer', scope: 'shipments:read' }],
]);

/**
 * A new private key as a JWK. The key is exported from a copy read back from PEM, never from the key
 * object the generation returned: Node 20 can deadlock exporting that one as JWK, when a garbage
 * collection during the export finalises the generation job, which takes the lock the export holds (seen
 * as a server that never listened, its main thread parked in `~KeyGenJob` under `ExportJWKRsaKey`).
 */
function generateJwk(type, options) {
  const encoding = { privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } };
  const { privateKey } = generateKeyPairSync(type, { ...options, ...encoding });
  return createPrivateKey(privateKey).export({ format: 'jwk' });
}

/** A private JWK set with one ES256 key (what access tokens are signed with) and one RS256 key. */
function generateJwks() {
  const ec = generateJwk('ec', { namedCurve: 'P-256' });
  const rsa = generateJwk('rsa', { modulusLength: 2048 });
  // Random kids, so a verifier holding keys from an earlier run notices the change and fetches the JWKS again.
  return {
    keys: [
      { ...ec, kid: `es256-${randomUUID()}`, alg: 'ES256', use: 'sig' },
      { ...rsa, kid: `rs256-${randomUUID()}`, alg: 'RS256', use: 'sig' },
    ],
  };
}

function loadJwks(file) {
  const jwks = JSON.parse(readFileSync(file, 'utf8'));
  if (!Array.isArray(jwks.keys) || !jwks.keys.some((key) => key.kty === 'EC' && key.crv === 'P-256')) {
    throw new Error(`${file} must be a JWK set with a P-256 (ES256) private key`);
  }
  return jwks;
}

/** OAUTH_CONSOLE_REDIRECT_URIS: absolute URIs without fragment, space-separated. */
function consoleRedirectUris(value) {
  const uris = (value ?? '').split(/\s+/).filter(Boolean);
  if (uris.length === 0) uris.push(DEFAULT_CONSOLE_REDIRECT_URIS);
  for (const uri of uris) {
    const url = URL.parse(uri);
    if (!url || !['http:', 'https:'].includes(url.protocol) || url.hash) {
      throw new Error(`OAUTH_CONSOLE_REDIRECT_URIS: ${JSON.stringify(uri)} is not an http(s) URI without fragment`);
    }
  }
  return uris;
}

const words = (scope) => (scope ?? '').split(' ').filter(Boolean);
const intersect = (a, b) => { const set = new Set(words(b)); return words(a).filter((s) => set.has(s)); };

/**
 * RFC 6749 §3.3 lets the server pick a default when the client asks for no scope; like `orderflow dev`'s
 * issuer (and Auth0), we grant everything the client may have. oidc-provider would otherwise issue a token
 * with no scope at all. Called while the token request's resource is resolved, before scopes are checked.
 */
function defaultToAllowedScopes(ctx, client) {
  if (ctx.oidc.params.grant_type === 'client_credentials' && !ctx.oidc.params.scope && client?.scope) {
    ctx.oidc.params.scope = client.scope;
  }
}

/**
 * The scopes of `urn:orderflow` a token (or the authorization request) may carry. Client credentials: the
 * client's allow-list. A user's flow: the scopes both the user and the client may have, once the user is known
 * (at the token endpoint, and at the authorization endpoint after login); before login, the client's list,
 * which the grant made at login narrows anyway.
 */
function resourceScopes(ctx, client) {
  if (!client) return '';
  if (ctx.oidc.params?.grant_type === 'client_credentials') return client.scope ?? '';
  const accountId = ctx.oidc.entities.Account?.accountId
    ?? ctx.oidc.entities.AuthorizationCode?.accountId
    ?? ctx.oidc.session?.accountId;
  if (!accountId) return client.scope ?? '';
  return intersect(client.scope, USERS.get(accountId)?.scope).join(' ');
}

// --- the login page -----------------------------------------------------------------------------------------

const HMAC_KEY = randomBytes(32);
const digest = (value) => createHmac('sha256', HMAC_KEY).update(value, 'utf8').digest();
// Compared even for unknown usernames, so the answer takes as long either way.
const NO_SUCH_USER = digest(randomBytes(32).toString('base64url'));

/** The username if the pair is right. Constant-time: both sides are HMAC'd, then timingSafeEqual'd. */
function checkPassword(username, password) {
  const user = USERS.get(username);
  const ok = timingSafeEqual(digest(password), user ? digest(user.password) : NO_SUCH_USER);
  return ok && user ? username : undefined;
}

const escapeHtml = (value) => String(value)
  .replaceAll('&', '&amp;')
  .replaceAll('<', '&lt;')
  .replaceAll('>', '&gt;')
  .replaceAll('"', '&quot;')
  .replaceAll("'", '&#39;');

function loginPage({ uid, clientId, username = '', error = false }) {
  const alert = error ? '\n    <p role="alert" id="error">Wrong username or password.</p>' : '';
  return `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Sign in – orderflow (dev)</title>
  </head>
  <body>
    <main>
    <h1>Sign in</h1>
    <p>to <strong>${escapeHtml(clientId)}</strong> on the orderflow development authorization server.</p>${alert}
    <form method="post" action="/interaction/${escapeHtml(encodeURIComponent(uid))}">
      <p>
        <label for="username">Username</label>
        <input id="username" name="username" autocomplete="username" autocapitalize="none" required value="${escapeHtml(username)}"${error || !username ? ' autofocus' : ''}>
      </p>
      <p>
        <label for="password">Password</label>
        <input id="password" name="password" type="password" autocomplete="current-password" required>
      </p>
      <p><button id="sign-in" type="submit">Sign in</button></p>
    </form>
    </main>
  </body>
</html>
`;
}

function messagePage(title, message) {
  return `<!doctype html>
<html lang="en">
  <head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
  <body><main><h1>${escapeHtml(title)}</h1><p>${escapeHtml(message)}</p></main></body>
</html>
`;
}

/**
 * Headers of every page served here. `form-action` lists the origin of the request's redirect_uri besides
 * 'self': Chrome applies form-action to each redirect after a form is submitted, and the login form's answer
 * redirects (through the authorization endpoint) to the client.
 */
function sendHtml(res, status, html, redirectUri) {
  const origin = redirectUri ? URL.parse(redirectUri)?.origin : undefined;
  const formAction = origin && origin !== 'null' ? `'self' ${origin}` : "'self'";
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': Buffer.byteLength(html),
    'Content-Security-Policy': `default-src 'none'; form-action ${formAction}; frame-ancestors 'none'; base-uri 'none'`,
    'X-Frame-Options': 'DENY',
    'X-Content-Type-Options': 'nosniff',
    'Cache-Control': 'no-store',
    'Referrer-Policy': 'no-referrer',
  });
  res.end(html);
}

async function readForm(req, limit = 8 * 1024) {
  if (!(req.headers['content-type'] ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded')) {
    return undefined;
  }
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

/**
 * Consent without a page: the grant gets, for `urn:orderflow`, the requested scopes that both the user and the
 * client may have, and `openid` if requested; everything else the prompt found missing is recorded as rejected,
 * so the prompt is satisfied and not asked again.
 */
async function autoConsent(provider, interaction) {
  const { prompt: { details }, params, session, grantId } = interaction;
  const accountId = session?.accountId;
  const client = await provider.Client.find(params.client_id);
  const user = USERS.get(accountId);
  if (!client || !user) {
    return { error: 'access_denied', error_description: 'unknown user or client' };
  }
  const grant = (grantId && await provider.Grant.find(grantId))
    || new provider.Grant({ accountId, clientId: params.client_id });

  const requested = words(params.scope);
  const allowed = new Set(intersect(user.scope, client.scope));
  const granted = requested.filter((scope) => API_SCOPES.includes(scope) && allowed.has(scope));
  const refused = new Set(requested.filter((scope) => API_SCOPES.includes(scope) && !allowed.has(scope)));
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    for (const scope of scopes) {
      if (indicator !== RESOURCE || !granted.includes(scope)) refused.add(scope);
    }
    if (indicator !== RESOURCE) grant.rejectResourceScope(indicator, scopes.join(' '));
  }
  if (granted.length) grant.addResourceScope(RESOURCE, granted.join(' '));
  if (refused.size) grant.rejectResourceScope(RESOURCE, [...refused].join(' '));

  // oidc-provider also counts the API scopes (they are declared in `scopes`) among the OpenID ones; they are
  // granted above for the resource only.
  if (requested.includes('openid')) grant.addOIDCScope('openid');
  const oidcRefused = (details.missingOIDCScope ?? []).filter((scope) => scope !== 'openid');
  if (oidcRefused.length) grant.rejectOIDCScope(oidcRefused.join(' '));
  if (details.missingOIDCClaims?.length) grant.rejectOIDCClaims(details.missingOIDCClaims);

  if (!granted.length && !requested.includes('openid')) {
    return { error: 'access_denied', error_description: `${accountId} may have none of the requested scopes` };
  }
  return { consent: { grantId: await grant.save() } };
}

/** GET and POST /interaction/:uid, the pages oidc-provider sends the browser to when it needs the user. */
async function interaction(provider, req, res, uid) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (error) {
    if (!(error instanceof errors.SessionNotFound)) throw error;
    details = undefined;
  }
  if (!details || details.uid !== uid) {
    sendHtml(res, 400, messagePage('Sign-in expired', 'This sign-in request has expired or is unknown. Start again from the application.'));
    return;
  }
  const { prompt, params } = details;

  if (prompt.name === 'consent') {
    // A known user (just signed in, or from an earlier session) and scopes not yet granted: grant them.
    const result = await autoConsent(provider, details);
    console.log(`consent for ${details.session?.accountId} to ${params.client_id}: ${result.error ? result.error_description : 'granted'}`);
    res.setHeader('Cache-Control', 'no-store');
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: !result.error });
    return;
  }
  if (prompt.name !== 'login') {
    sendHtml(res, 400, messagePage('Cannot continue', `Unsupported prompt ${prompt.name}.`));
    return;
  }

  if (req.method === 'GET') {
    sendHtml(res, 200, loginPage({ uid, clientId: params.client_id }), params.redirect_uri);
    return;
  }

  const form = await readForm(req);
  if (!form) {
    sendHtml(res, 400, messagePage('Bad request', 'Expected a form (application/x-www-form-urlencoded, at most 8 KiB).'), params.redirect_uri);
    return;
  }
  const username = form.get('username') ?? '';
  const accountId = checkPassword(username, form.get('password') ?? '');
  if (!accountId) {
    console.log(`sign-in refused for ${JSON.stringify(username.slice(0, 64))} to ${params.client_id}: wrong username or password`);
    sendHtml(res, 401, loginPage({ uid, clientId: params.client_id, username, error: true }), params.redirect_uri);
    return;
  }
  console.log(`${accountId} signed in to ${params.client_id}`);
  res.setHeader('Cache-Control', 'no-store');
  // Back to the authorization endpoint, which asks for consent next (answered by autoConsent above).
  await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
}

function main() {
  if (process.argv.includes('--generate-jwks')) {
    process.stdout.write(`${JSON.stringify(generateJwks(), null, 2)}\n`);
    return;
  }

  const host = process.env.OAUTH_HOST || '127.0.0.1';
  const port = Number.parseInt(process.env.OAUTH_PORT || '9000', 10);
  const issuer = process.env.OAUTH_SERVER_ISSUER || `http://127.0.0.1:${port}`;
  const jwks = process.env.OAUTH_JWKS_FILE ? loadJwks(process.env.OAUTH_JWKS_FILE) : generateJwks();
  const redirectUris = consoleRedirectUris(process.env.OAUTH_CONSOLE_REDIRECT_URIS);

  const provider = new Provider(issuer, {
    clients: [...SERVICE_CLIENTS, consoleClient(redirectUris)],
    jwks,
    scopes: API_SCOPES,
    clientAuthMethods: ['client_secret_basic'],
    // Only the console's authorization code; no implicit or hybrid flows.
    responseTypes: ['code'],
    // PKCE on every authorization request. oidc-provider 9 knows only S256 (plain is refused).
    pkce: { required: () => true },
    // Sign the session and interaction cookies; a random key per start (sessions live in memory anyway).
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    ttl: {
      ClientCredentials: TOKEN_TTL_SECONDS,
      AccessToken: TOKEN_TTL_SECONDS,
      AuthorizationCode: 60,
      // A sign-in page left open this long expires; a signed-in browser is not asked again for a work day.
      Interaction: 60 * 60,
      Session: SESSION_TTL_SECONDS,
      Grant: SESSION_TTL_SECONDS,
    },
    async findAccount(_ctx, sub) {
      if (!USERS.has(sub)) return undefined;
      return { accountId: sub, async claims() { return { sub }; } };
    },
    // Our own login page (interaction() above), not oidc-provider's development one.
    interactions: { url: async (_ctx, { uid }) => `/interaction/${uid}` },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        // The authorization code's token is for urn:orderflow even when the token request names no resource
        // and `openid` was requested (oidc-provider would otherwise issue an opaque token for /me).
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator, client) => {
          if (resourceIndicator !== RESOURCE) {
            throw new errors.InvalidTarget(`the only resource is ${RESOURCE}`);
          }
          defaultToAllowedScopes(ctx, client);
          return {
            // Scopes outside the client's allow-list are refused earlier (invalid_scope); this is a backstop.
            scope: resourceScopes(ctx, client),
            audience: AUDIENCE,
            accessTokenTTL: TOKEN_TTL_SECONDS,
            // RFC 9068 JWT access tokens (header `typ: at+jwt`), verifiable with the published JWKS.
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
  });

  // Each issued token and each refusal, one line each: enough to debug a failing test from the log.
  provider.on('grant.success', (ctx) => {
    const token = ctx.oidc.entities.ClientCredentials ?? ctx.oidc.entities.AccessToken;
    const user = token?.accountId ? ` for ${token.accountId}` : '';
    console.log(`token issued to ${ctx.oidc.client?.clientId}${user} scope=${JSON.stringify(token?.scope ?? '')}`);
  });
  provider.on('grant.error', (ctx, error) => {
    console.log(`token refused for ${ctx.oidc.client?.clientId ?? 'unknown client'}: ${error.message} (${error.error_description ?? ''})`);
  });
  provider.on('authorization.error', (ctx, error) => {
    console.log(`authorization refused for ${ctx.oidc.client?.clientId ?? 'unknown client'}: ${error.message} (${error.error_description ?? ''})`);
  });

  // A tiny router: the login page here, everything else to oidc-provider.
  const callback = provider.callback();
  const server = createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://localhost');
    const match = /^\/interaction\/([\w-]+)$/.exec(pathname);
    if (!match) {
      callback(req, res);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'POST') {
      res.writeHead(405, { Allow: 'GET, POST', 'Content-Length': 0 }).end();
      return;
    }
    interaction(provider, req, res, match[1]).catch((error) => {
      console.error(`interaction ${match[1]}: ${error.stack ?? error}`);
      if (!res.headersSent) sendHtml(res, 500, messagePage('Error', 'The sign-in failed; see the server log.'));
      else res.end();
    });
  });
  server.listen(port, host, () => {
    console.log(`oidc-provider listening on http://${host}:${port}, issuer ${issuer}, audience ${AUDIENCE} (resource ${RESOURCE}), console redirect URIs ${redirectUris.join(' ')}`);
  });
  server.on('error', (error) => {
    console.error(`cannot listen on ${host}:${port}: ${error.message}`);
    process.exit(1);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      server.close(() => process.exit(0));
      // A browser's keep-alive connections would otherwise hold close() open.
      server.closeAllConnections();
    });
  }
}

try {
  main();
} catch (error) {
  // A configuration mistake (say, a bad OAUTH_JWKS_FILE) deserves one line, not a stack trace.
  console.error(`oauth server: ${error.message}`);
  process.exit(1);
}
