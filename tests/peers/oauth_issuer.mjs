// A real OAuth 2.0 / OIDC issuer for the tests (oauth2-mock-server): signs JWTs with a
// generated RSA key and publishes its JWKS and metadata on 127.0.0.1.
//
// Prints one JSON line when ready: {"issuer": "...", "jwks_uri": "..."}. Then reads one JSON
// command per line on stdin and answers each with one line:
//   {"mint": {claims to set or override}, "expiresIn": s, "kid": k}  -> {"token": "..."}
//   {"rotate": "kid"}            -> a new RSA key with that kid, published in the JWKS
//   {"forge": "none"}            -> {"token": ...} an unsigned token (alg none)
//   {"forge": "hs256"}           -> {"token": ...} HS256-signed with the public key's PEM
//   {"lifetime": s}              -> tokens from the token endpoint live s seconds from now on
//   {"granted": true}            -> {"granted": n} how many tokens the token endpoint gave
//   {"exchanged": true}          -> {"exchanged": n, "asked": m} tokens the exchange endpoint
//                                   gave, and requests it had
//   {"refuse_exchange": sub}     -> the exchange endpoint refuses the tokens of `sub`
//
// Besides the mock's own endpoints (which have no RFC 8693 token exchange), `exchange_uri` is a
// token endpoint for that grant only: the subject token is verified against the issuer's keys,
// and a token is minted for the same subject, for the `resource` asked for, with the client
// (HTTP Basic) named as the actor (`act`).
import { createHmac, createPublicKey } from 'node:crypto';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { Events, OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256', { kid: 'first' });
// The token endpoint's token lifetime (unset: the server's default), and its grants so far.
let lifetime;
let granted = 0;
// Tokens from the token endpoint are for the resource the client names (RFC 8707), as a real
// authorization server issues them, and name the client as their subject.
server.service.on(Events.BeforeTokenSigning, (token, req) => {
  const body = req.body ?? {};
  if (body.resource !== undefined) token.payload.aud = body.resource;
  if (token.payload.sub === undefined) {
    const basic = (req.headers.authorization ?? '').replace(/^Basic /i, '');
    const fromBasic = basic ? Buffer.from(basic, 'base64').toString().split(':')[0] : undefined;
    token.payload.sub = body.client_id ?? fromBasic ?? 'client';
  }
  if (lifetime !== undefined && body.grant_type !== undefined) {
    token.payload.exp = Math.floor(Date.now() / 1000) + lifetime;
  }
});
server.service.on(Events.BeforeResponse, (response) => {
  if (response.body?.access_token === undefined) return;
  granted += 1;
  if (lifetime !== undefined) response.body.expires_in = lifetime;
});
await server.start(0, '127.0.0.1');
const issuer = server.issuer.url;
// The server listens on 127.0.0.1 only: its keys are fetched there, whatever host it names.
const jwksUri = `${issuer.replace('//localhost:', '//127.0.0.1:')}/jwks`;

let exchanged = 0;
let asked = 0;
const refused = new Set();
const exchange = createServer(async (req, res) => {
  const answer = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  asked += 1;
  let text = '';
  for await (const chunk of req) text += chunk;
  const body = Object.fromEntries(new URLSearchParams(text));
  if (req.method !== 'POST' || body.grant_type !== 'urn:ietf:params:oauth:grant-type:token-exchange') {
    return answer(400, { error: 'unsupported_grant_type' });
  }
  const basic = (req.headers.authorization ?? '').replace(/^Basic /i, '');
  const client = basic ? decodeURIComponent(Buffer.from(basic, 'base64').toString().split(':')[0]) : undefined;
  if (client === undefined) return answer(401, { error: 'invalid_client' });
  let subject;
  try {
    const keys = await (await fetch(jwksUri)).json();
    ({ payload: subject } = await jwtVerify(body.subject_token ?? '', createLocalJWKSet(keys), { issuer }));
  } catch (e) {
    return answer(400, { error: 'invalid_grant', error_description: `subject_token: ${e.message}` });
  }
  if (refused.has(subject.sub)) {
    return answer(400, { error: 'invalid_grant', error_description: `${subject.sub} may not reach that resource` });
  }
  const token = await server.issuer.buildToken({
    expiresIn: 300,
    scopesOrTransform: (_header, payload) => Object.assign(payload, {
      sub: subject.sub,
      aud: body.resource,
      scope: body.scope ?? subject.scope,
      act: { sub: client },
    }),
  });
  exchanged += 1;
  answer(200, {
    access_token: token,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: 300,
  });
});
await new Promise((resolve) => exchange.listen(0, '127.0.0.1', resolve));
const exchangeUri = `http://127.0.0.1:${exchange.address().port}/token`;

process.stdout.write(JSON.stringify({ issuer, jwks_uri: jwksUri, exchange_uri: exchangeUri }) + '\n');

const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);
const claims = (extra) => ({ iss: issuer, iat: now(), nbf: now() - 10, exp: now() + 3600, ...extra });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  let answer = {};
  if (command.mint !== undefined) {
    const token = await server.issuer.buildToken({
      kid: command.kid,
      expiresIn: command.expiresIn,
      scopesOrTransform: (_header, payload) => Object.assign(payload, command.mint),
    });
    answer = { token };
  } else if (command.lifetime !== undefined) {
    lifetime = command.lifetime;
  } else if (command.granted !== undefined) {
    answer = { granted };
  } else if (command.exchanged !== undefined) {
    answer = { exchanged, asked };
  } else if (command.refuse_exchange !== undefined) {
    refused.add(command.refuse_exchange);
  } else if (command.rotate !== undefined) {
    await server.issuer.keys.generate('RS256', { kid: command.rotate });
  } else if (command.forge === 'none') {
    answer = { token: `${b64({ alg: 'none', typ: 'JWT', kid: 'first' })}.${b64(claims(command.claims ?? {}))}.` };
  } else if (command.forge === 'hs256') {
    // The classic confusion attack: HMAC keyed with the bytes of the RSA public key.
    const jwk = server.issuer.keys.get('first');
    const pem = createPublicKey({ key: { kty: jwk.kty, n: jwk.n, e: jwk.e }, format: 'jwk' })
      .export({ type: 'spki', format: 'pem' });
    const signed = `${b64({ alg: 'HS256', typ: 'JWT', kid: 'first' })}.${b64(claims(command.claims ?? {}))}`;
    answer = { token: `${signed}.${createHmac('sha256', pem).update(signed).digest('base64url')}` };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
exchange.close();
await server.stop();
