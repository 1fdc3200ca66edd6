'use strict';

// The official DingTalk Node SDK (@alicloud/dingtalk) and an npm robot
// sender, pointed at dingproxy instead of api.dingtalk.com / oapi.dingtalk.com.
// Five calls, one line each; the exit status is 1 if any answer is not the
// expected one. Tokens are never printed, only their length.
//
// Environment (defaults match bin/fakedingtalk):
//   DINGPROXY_PORT           dingproxy's port on 127.0.0.1 (8080)
//   DINGTALK_APP_KEY         app key dingproxy is configured with (demo-app-key)
//   DINGTALK_APP_SECRET      its secret (demo-app-secret)
//   DINGTALK_ROBOT_TOKEN     a robot webhook's access_token (demo-robot-token)
//   DINGTALK_USER_ID         a unionId DingTalk knows (manager7)
//   DINGTALK_UNKNOWN_USER_ID a unionId it does not (unknown-user)

const OpenApi = require('@alicloud/openapi-client');
const oauth2 = require('@alicloud/dingtalk/oauth2_1_0');
const contact = require('@alicloud/dingtalk/contact_1_0');
const ChatBot = require('dingtalk-robot-sender');

const env = (name, def) => process.env[name] || def;
const port = env('DINGPROXY_PORT', '8080');
const appKey = env('DINGTALK_APP_KEY', 'demo-app-key');
const appSecret = env('DINGTALK_APP_SECRET', 'demo-app-secret');
const robotToken = env('DINGTALK_ROBOT_TOKEN', 'demo-robot-token');
const userId = env('DINGTALK_USER_ID', 'manager7');
const unknownUserId = env('DINGTALK_UNKNOWN_USER_ID', 'unknown-user');

// The one change an application makes: plain HTTP to the sidecar.
function config() {
  return new OpenApi.Config({
    protocol: 'http',
    endpoint: `127.0.0.1:${port}`,
    regionId: 'central',
    connectTimeout: 5000,
    // The default is 3 s (httpx): shorter than dingproxy's retries. Above its
    // default retry.timeout (30s), so the SDK does not give up first.
    readTimeout: 35000,
  });
}

const oauthClient = new oauth2.default(config());
const contactClient = new contact.default(config());

let failed = 0;

// step runs fn, which returns [ok, what it got]; a thrown error is a failure.
async function step(label, call, fn) {
  let ok = false;
  let got;
  try {
    [ok, got] = await fn();
  } catch (err) {
    got = `unexpected ${describe(err)}`;
  }
  if (!ok) failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${label}: ${call} -> ${got}`);
}

function describe(err) {
  if (err && err.code !== undefined && err.statusCode !== undefined) {
    return `SDK error code ${err.code}, statusCode ${err.statusCode}`;
  }
  return `error ${err && err.message ? err.message : err}`;
}

function attempts(headers) {
  return (headers || {})['x-dingproxy-attempts'];
}

// getUser expecting the SDK's typed error: returns [ok, what it got].
async function expectError(id, wantCode, wantStatus) {
  try {
    const res = await contactClient.getUser(id);
    return [false, `HTTP ${res.statusCode} and no error`];
  } catch (err) {
    const ok = err.code === wantCode && err.statusCode === wantStatus;
    let got = describe(err);
    if (!ok) got += ` (want code ${wantCode}, statusCode ${wantStatus})`;
    return [ok, got];
  }
}

async function main() {
  // (a) The SDK's own token call, with the configured key and secret:
  // dingproxy answers it from its cache (X-Dingproxy-Attempts: 0).
  await step('token call', 'POST /v1.0/oauth2/accessToken', async () => {
    const res = await oauthClient.getAccessToken(
      new oauth2.GetAccessTokenRequest({ appKey, appSecret }),
    );
    const tok = res.body.accessToken || '';
    const n = attempts(res.headers);
    const ok = res.statusCode === 200 && tok.length > 0 && res.body.expireIn > 0 && n === '0';
    return [ok, `token of ${tok.length} chars, expireIn ${res.body.expireIn}, X-Dingproxy-Attempts ${n}`];
  });

  // (b) A call with no x-acs-dingtalk-access-token header: dingproxy
  // injects its cached app token.
  await step('token-less call', `GET /v1.0/contact/users/${userId}`, async () => {
    const res = await contactClient.getUser(userId);
    const n = attempts(res.headers);
    const ok = res.statusCode === 200 && !!res.body.unionId && Number(n) >= 1;
    return [ok, `HTTP ${res.statusCode}, unionId ${res.body.unionId}, X-Dingproxy-Attempts ${n}`];
  });

  // (c) DingTalk's own business error reaches the SDK as its typed error.
  await step('business error', `GET /v1.0/contact/users/${unknownUserId}`, () =>
    expectError(unknownUserId, 'UserNotFound', 404));

  // (d) dingproxy's own refusal (an encoded slash in the path), in the api
  // host's error shape, so the SDK reads its code as it reads DingTalk's.
  // The SDK puts the id into the path as it is, unescaped.
  await step('proxy error', 'GET /v1.0/contact/users/a%2Fb', () =>
    expectError('a%2Fb', 'dingproxy.BadRequest', 400));

  // (e) A robot webhook: its own access_token, passed through untouched.
  await step('robot', 'POST /robot/send', async () => {
    const bot = new ChatBot({
      webhook: `http://127.0.0.1:${port}/robot/send?access_token=${encodeURIComponent(robotToken)}`,
    });
    const res = await bot.text('hello from dingproxy examples/node');
    const n = attempts(res.headers);
    const ok = res.status === 200 && res.data && res.data.errcode === 0;
    return [ok, `HTTP ${res.status}, errcode ${res.data && res.data.errcode}, errmsg ${res.data && res.data.errmsg}, X-Dingproxy-Attempts ${n}`];
  });

  if (failed > 0) {
    console.log(`${failed} of 5 steps failed`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
