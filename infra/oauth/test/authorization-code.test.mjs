// The authorization-code + PKCE flow of `delivery-console` against server.js, driven over HTTP as a browser
// would (redirects followed by hand, cookies carried by hand), plus a client-credentials check.
//   cd infra/oauth && npm test
import { spawn } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

const SERVER = join(dirname(fileURLToPath(import.meta.url)), '..', 'server.js');
const REDIRECT_URI = 'http://127.0.0.1:1/console/callback';
const CONSOLE = { id: 'delivery-console', secret: 'dev-secret-console' };

let child;
let log = '';
let issuer;
let discovery;

async function freePort() {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

before(async () => {
  const port = await freePort();
  issuer = `http://127.0.0.1:${port}`;
  child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, OAUTH_PORT: String(port), OAUTH_CONSOLE_REDIRECT_URIS: REDIRECT_URI },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (chunk) => { log += chunk; });
  child.stderr.on('data', (chunk) => { log += chunk; });
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server.js exited (${child.exitCode}):\n${log}`);
    try {
      const res = await fetch(`${issuer}/.well-known/openid-configuration`);
      if (res.ok) { discovery = await res.json(); break; }
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`server.js did not answer on ${issuer} within 20 s:\n${log}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
});

after(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
  // OAUTH_TEST_LOG=1 npm test: the server's log too, to debug a failure.
  if (process.env.OAUTH_TEST_LOG) process.stderr.write(`--- server.js log\n${log}`);
});

/** Cookies by name and path, sent when the path matches, as a browser does (enough for one host). */
class CookieJar {
  #cookies = new Map();

  store(res) {
    for (const header of res.headers.getSetCookie()) {
      const [pair, ...attributes] = header.split(';').map((part) => part.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = '/';
      let expired = value === '';
      for (const attribute of attributes) {
        const [key, val = ''] = attribute.split('=');
        if (key.toLowerCase() === 'path') path = val;
        if (key.toLowerCase() === 'expires' && Date.parse(val) <= Date.now()) expired = true;
        if (key.toLowerCase() === 'max-age' && Number(val) <= 0) expired = true;
      }
      const key = `${name}\t${path}`;
      if (expired) this.#cookies.delete(key);
      else this.#cookies.set(key, { name, value, path });
    }
  }

  header(url) {
    const { pathname } = new URL(url);
    return [...this.#cookies.values()]
      .filter(({ path }) => pathname === path || pathname.startsWith(path.endsWith('/') ? path : `${path}/`))
      .map(({ name, value }) => `${name}=${value}`)
      .join('; ');
  }
}

async function request(jar, url, init = {}) {
  const headers = new Headers(init.headers);
  const cookie = jar.header(url);
  if (cookie) headers.set('cookie', cookie);
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  jar.store(res);
  return res;
}

/** Follows 30x by hand until a response is not a redirect or points at the client's redirect_uri. */
async function follow(jar, res, from) {
  let url = from;
  for (let hops = 0; hops < 10; hops += 1) {
    if (res.status < 300 || res.status >= 400) return { res, url };
    const next = new URL(res.headers.get('location'), url).href;
    await res.arrayBuffer();
    if (next.startsWith(REDIRECT_URI)) return { redirect: new URL(next) };
    url = next;
    res = await request(jar, url);
  }
  throw new Error(`too many redirects, last ${url}`);
}

function pkcePair() {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

/** Starts an authorization request and follows it to the login page. */
async function openLoginPage(jar, params) {
  const url = authorizationUrl(params);
  const { res, url: pageUrl, redirect } = await follow(jar, await request(jar, url), url);
  assert.equal(redirect, undefined, `expected the login page, was redirected to ${redirect}`);
  assert.equal(res.status, 200, `login page ${pageUrl}: ${res.status}`);
  assert.match(new URL(pageUrl).pathname, /^\/interaction\/[\w-]+$/);
  return { res, html: await res.text(), pageUrl };
}

function postLogin(jar, pageUrl, username, password) {
  return request(jar, pageUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ username, password }),
  });
}

function assertLoginPage(res, html) {
  assert.match(res.headers.get('content-type'), /^text\/html/);
  assert.equal(
    res.headers.get('content-security-policy'),
    "default-src 'none'; form-action 'self' http://127.0.0.1:1; frame-ancestors 'none'; base-uri 'none'",
  );
  assert.equal(res.headers.get('x-frame-options'), 'DENY');
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(res.headers.get('cache-control'), 'no-store');
  assert.match(html, /<input id="username" name="username"[^>]*>/);
  assert.match(html, /<input id="password" name="password" type="password"[^>]*>/);
  assert.match(html, /<button id="sign-in" type="submit">/);
  assert.match(html, /<label for="username">/);
  assert.match(html, /<label for="password">/);
  assert.doesNotMatch(html, /<script|<style|style=/i);
}

/**
 * Signs in (after one wrong password when asked) and returns where the browser ends up: the redirect to the
 * client (with `code`, or `error`), and the cookie jar, which holds the session afterwards.
 */
async function authorize(username, password, { challenge, wrongPasswordFirst = false, scope, jar = new CookieJar() } = {}) {
  const state = randomBytes(12).toString('base64url');
  const { res, html, pageUrl } = await openLoginPage(jar, { challenge, state, scope });
  assertLoginPage(res, html);

  if (wrongPasswordFirst) {
    const wrong = await postLogin(jar, pageUrl, username, `${password}-wrong`);
    const wrongHtml = await wrong.text();
    assert.equal(wrong.status, 401);
    assertLoginPage(wrong, wrongHtml);
    assert.match(wrongHtml, /<p role="alert" id="error">Wrong username or password\.<\/p>/);
  } else {
    assert.doesNotMatch(html, /id="error"/);
  }

  const { redirect, res: last } = await follow(jar, await postLogin(jar, pageUrl, username, password), pageUrl);
  assert.ok(redirect, `no redirect to the client; ended at ${last?.status}: ${await last?.text()}`);
  assert.equal(redirect.searchParams.get('state'), state);
  assert.equal(redirect.searchParams.get('iss'), issuer);
  return { redirect, jar };
}

/** authorize(), expecting a code. */
async function signIn(username, password, options) {
  const { redirect, jar } = await authorize(username, password, options);
  assert.equal(redirect.searchParams.get('error'), null, `error: ${redirect.searchParams.get('error_description')}`);
  const code = redirect.searchParams.get('code');
  assert.ok(code);
  return { code, jar };
}

function authorizationUrl({ challenge, state, scope = 'shipments:read shipments:write' }) {
  const url = new URL(discovery.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: CONSOLE.id,
    redirect_uri: REDIRECT_URI,
    scope,
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  return url.href;
}

function basic(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

async function tokenRequest(client, params) {
  const res = await fetch(discovery.token_endpoint, {
    method: 'POST',
    headers: { authorization: basic(client.id, client.secret), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(params),
  });
  return { status: res.status, body: await res.json() };
}

/** Checks the ES256 signature against the published JWKS and returns header and payload. */
async function decodeJwt(token) {
  const [header64, payload64, signature64] = token.split('.');
  const header = JSON.parse(Buffer.from(header64, 'base64url'));
  const payload = JSON.parse(Buffer.from(payload64, 'base64url'));
  const { keys } = await (await fetch(discovery.jwks_uri)).json();
  const jwk = keys.find((key) => key.kid === header.kid);
  assert.ok(jwk, `kid ${header.kid} is not in the JWKS`);
  const ok = verify('sha256', Buffer.from(`${header64}.${payload64}`), {
    key: createPublicKey({ key: jwk, format: 'jwk' }),
    dsaEncoding: 'ieee-p1363',
  }, Buffer.from(signature64, 'base64url'));
  assert.ok(ok, 'bad signature');
  return { header, payload };
}

async function assertUserToken(body, username, scopes, { idToken = false } = {}) {
  assert.equal(body.token_type, 'Bearer');
  assert.equal(body.refresh_token, undefined);
  assert.equal(body.id_token === undefined, !idToken);
  const { header, payload } = await decodeJwt(body.access_token);
  assert.equal(header.alg, 'ES256');
  assert.equal(header.typ, 'at+jwt');
  assert.equal(payload.iss, issuer);
  assert.equal(payload.aud, 'orderflow');
  assert.equal(payload.sub, username);
  assert.equal(payload.client_id, CONSOLE.id);
  assert.deepEqual(payload.scope.split(' ').sort(), scopes);
  assert.equal(payload.exp - payload.iat, 3600);
}

const redeem = (code, verifier) => tokenRequest(CONSOLE, {
  grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier,
});

test('discovery names the authorization endpoint and S256 only', () => {
  assert.equal(discovery.authorization_endpoint, `${issuer}/auth`);
  assert.deepEqual(discovery.code_challenge_methods_supported, ['S256']);
});

test('staff signs in (after a wrong password) and gets both shipment scopes', async () => {
  const { verifier, challenge } = pkcePair();
  const { code } = await signIn('staff', 'dev-password-staff', { challenge, wrongPasswordFirst: true });
  const { status, body } = await redeem(code, verifier);
  assert.equal(status, 200, JSON.stringify(body));
  await assertUserToken(body, 'staff', ['shipments:read', 'shipments:write']);

  // A code is good once.
  const again = await redeem(code, verifier);
  assert.equal(again.status, 400);
  assert.equal(again.body.error, 'invalid_grant');
});

test('viewer asks for both shipment scopes and gets shipments:read only', async () => {
  const { verifier, challenge } = pkcePair();
  const { code } = await signIn('viewer', 'dev-password-viewer', { challenge, wrongPasswordFirst: true });
  const { status, body } = await redeem(code, verifier);
  assert.equal(status, 200, JSON.stringify(body));
  await assertUserToken(body, 'viewer', ['shipments:read']);
});

test('a wrong code_verifier is invalid_grant', async () => {
  const { challenge } = pkcePair();
  const { code } = await signIn('staff', 'dev-password-staff', { challenge });
  const { status, body } = await redeem(code, pkcePair().verifier);
  assert.equal(status, 400);
  assert.equal(body.error, 'invalid_grant');
});

test('a signed-in user is not asked again', async () => {
  const first = pkcePair();
  const { jar } = await signIn('viewer', 'dev-password-viewer', { challenge: first.challenge, scope: 'shipments:read' });
  // The same browser, and a scope it was not granted yet (and may not have): no login page, straight back.
  const { verifier, challenge } = pkcePair();
  const url = authorizationUrl({ challenge, state: 'again' });
  const { redirect } = await follow(jar, await request(jar, url), url);
  assert.ok(redirect, 'expected a redirect to the client');
  assert.equal(redirect.searchParams.get('state'), 'again');
  const { status, body } = await redeem(redirect.searchParams.get('code'), verifier);
  assert.equal(status, 200, JSON.stringify(body));
  await assertUserToken(body, 'viewer', ['shipments:read']);
});

test('openid is not among the console\'s scopes: invalid_scope', async () => {
  const jar = new CookieJar();
  const url = authorizationUrl({ challenge: pkcePair().challenge, state: 's', scope: 'openid shipments:read' });
  const res = await request(jar, url);
  assert.equal(res.status, 303);
  const location = new URL(res.headers.get('location'));
  assert.equal(`${location.origin}${location.pathname}`, REDIRECT_URI);
  assert.equal(location.searchParams.get('error'), 'invalid_scope');
});

test('a user who may have none of the requested scopes is access_denied', async () => {
  const { challenge } = pkcePair();
  const { redirect } = await authorize('viewer', 'dev-password-viewer', { challenge, scope: 'shipments:write' });
  assert.equal(redirect.searchParams.get('code'), null);
  assert.equal(redirect.searchParams.get('error'), 'access_denied');
});

test('the login page escapes what it echoes', async () => {
  const jar = new CookieJar();
  const { pageUrl } = await openLoginPage(jar, { challenge: pkcePair().challenge, state: 's' });
  const res = await postLogin(jar, pageUrl, '"><script>alert(1)</script>', 'x');
  const html = await res.text();
  assert.equal(res.status, 401);
  assert.doesNotMatch(html, /<script/);
  assert.match(html, /value="&quot;&gt;&lt;script&gt;alert\(1\)&lt;\/script&gt;"/);
});

test('an authorization request without PKCE is refused', async () => {
  const url = new URL(discovery.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code', client_id: CONSOLE.id, redirect_uri: REDIRECT_URI, scope: 'shipments:read', state: 's',
  });
  const res = await fetch(url, { redirect: 'manual' });
  assert.equal(res.status, 303);
  const location = new URL(res.headers.get('location'));
  assert.equal(`${location.origin}${location.pathname}`, REDIRECT_URI);
  assert.equal(location.searchParams.get('error'), 'invalid_request');
});

test('client credentials still work for delivery-staff', async () => {
  const { status, body } = await tokenRequest(
    { id: 'delivery-staff', secret: 'dev-secret-delivery' },
    { grant_type: 'client_credentials' },
  );
  assert.equal(status, 200, JSON.stringify(body));
  const { header, payload } = await decodeJwt(body.access_token);
  assert.equal(header.alg, 'ES256');
  assert.equal(header.typ, 'at+jwt');
  assert.equal(payload.aud, 'orderflow');
  assert.equal(payload.sub, 'delivery-staff');
  assert.equal(payload.client_id, 'delivery-staff');
  assert.deepEqual(payload.scope.split(' ').sort(), ['shipments:read', 'shipments:write']);
});
