// What an application on the MCP TypeScript SDK does with chatdock, run by tests/mcp/test_typescript.py:
// `node client.mjs CONFIG`, where CONFIG is JSON naming the SDK (1: @modelcontextprotocol/sdk 1.x, the initialize
// era; 2: @modelcontextprotocol/client 2.x, in "legacy" mode or, for "modern", "auto": it probes, and chatdock speaks 2026-07-28), the server
// to talk to and a second connection ("peer") that writes while this one listens. It prints one JSON report on
// stdout; a step the SDK throws on ends the script with the error on stderr.
const config = JSON.parse(process.argv[2]);
const modern = config.era === "modern";
const sdk =
  config.sdk === 1
    ? {
        ...(await import("@modelcontextprotocol/sdk/client/index.js")),
        ...(await import("@modelcontextprotocol/sdk/client/stdio.js")),
        ...(await import("@modelcontextprotocol/sdk/client/streamableHttp.js")),
        updated: (await import("@modelcontextprotocol/sdk/types.js")).ResourceUpdatedNotificationSchema,
      }
    : {
        ...(await import("@modelcontextprotocol/client")),
        ...(await import("@modelcontextprotocol/client/stdio")),
        updated: "notifications/resources/updated",
      };
const { Client, StdioClientTransport, StreamableHTTPClientTransport } = sdk;
const options = config.sdk === 2 ? { versionNegotiation: { mode: modern ? "auto" : "legacy" } } : {};
const CONTACT = "+31612345678";
const OTHER = "+442071838750";
const transcriptUri = (id) => `chatdock://contacts/${encodeURIComponent(id)}/transcript`;

function transportOf(target) {
  if (target.stdio) {
    const { command, args, env } = target.stdio;
    return new StdioClientTransport({ command, args, env, stderr: "inherit" });
  }
  const headers = target.http.key ? { Authorization: `Bearer ${target.http.key}` } : {};
  return new StreamableHTTPClientTransport(new URL(target.http.url), { requestInit: { headers } });
}

async function connected(target, name) {
  const client = new Client({ name, version: "1.0.0" }, options);
  const transport = transportOf(target);
  // SDK 1.x tells the version it agreed to only to a transport that asks (its HTTP one): the stdio one asks here
  transport.setProtocolVersion ??= (version) => (transport.agreed = version);
  await client.connect(transport);
  await client.listTools(); // the SDK checks structured results against the output schemas it has listed
  return { client, transport };
}

// a tool call as an application makes it: the result, or what the SDK threw
async function call(client, name, args) {
  try {
    const result = await client.callTool({ name, arguments: args });
    return {
      isError: result.isError === true,
      text: result.content.filter((part) => part.type === "text").map((part) => part.text),
      structured: result.structuredContent ?? null,
    };
  } catch (error) {
    return { thrown: String(error.message ?? error) };
  }
}

const heard = [];
const waiting = [];
function waitFor(uri, ms = 20000) {
  return new Promise((resolve, reject) => {
    if (heard.includes(uri)) return resolve();
    const timer = setTimeout(() => reject(new Error(`no notifications/resources/updated for ${uri} in ${ms} ms`)), ms);
    waiting.push({ uri, done: () => (clearTimeout(timer), resolve()) });
  });
}

const report = {};
const { client, transport } = await connected(config.server, "ts-sdk-app");
client.setNotificationHandler(sdk.updated, (notification) => {
  heard.push(notification.params.uri);
  for (const waiter of waiting.filter((w) => w.uri === notification.params.uri)) waiter.done();
});
report.server = client.getServerVersion();
report.capabilities = client.getServerCapabilities();
report.protocol = client.getNegotiatedProtocolVersion?.() ?? transport.protocolVersion ?? transport.agreed ?? null;
report.tools = (await client.listTools()).tools.map((tool) => ({
  name: tool.name,
  outputSchema: tool.outputSchema !== undefined,
  annotations: tool.annotations ?? null,
}));

report.appended = [
  await call(client, "append_message", {
    contact_id: CONTACT,
    channel: "whatsapp",
    role: "user",
    content: "Where is my order?",
    metadata: { provider_message_id: "wamid.1" },
  }),
  await call(client, "append_message", {
    contact_id: CONTACT,
    channel: "whatsapp",
    role: "assistant",
    content: "It ships tomorrow.",
    context_limit: 10,
  }),
];
report.retried = await call(client, "append_message", {
  contact_id: CONTACT,
  channel: "whatsapp",
  role: "user",
  content: "Where is my order?",
  metadata: { provider_message_id: "wamid.1" },
});
report.context = await call(client, "get_context", { contact_id: CONTACT });
report.contextRows = await call(client, "get_context", { contact_id: CONTACT, include_messages: true });
report.listed = await call(client, "list_messages", { contact_id: CONTACT, limit: 1 });
report.searched = await call(client, "search_messages", { query: "order" });
report.contact = await call(client, "get_contact", { contact_id: CONTACT });
report.refused = await call(client, "append_message", {
  contact_id: CONTACT,
  channel: "whatsapp",
  role: "robot",
  content: "hi",
});
report.unknownTool = await call(client, "no_such_tool", {});

report.resources = (await client.listResources()).resources.map((resource) => resource.uri);
report.templates = (await client.listResourceTemplates()).resourceTemplates.map((template) => template.uriTemplate);
report.transcript = (await client.readResource({ uri: transcriptUri(CONTACT) })).contents.map((c) => c.text);
report.prompts = (await client.listPrompts()).prompts.map((prompt) => prompt.name);
report.prompt = (await client.getPrompt({ name: "continue_conversation", arguments: { contact_id: CONTACT } }))
  .messages.length;

// the other tools, each result checked by the SDK against its output schema
const opened = await call(client, "open_chat", { contact_id: CONTACT, channel: "voice", agent_id: "bot" });
const chat = opened.structured?.id;
report.chatTools = [
  opened,
  await call(client, "post_as_contact", { contact_id: CONTACT, chat_id: chat, message: [{ text: "Hello?" }] }),
  await call(client, "update_chat", { chat_id: chat, status: "COMPLETED" }),
  await call(client, "list_chats", { contact_id: CONTACT }),
];
const spare = await call(client, "append_message", { contact_id: "spare", channel: "sms", role: "user", content: "x" });
report.identityTools = [
  spare,
  await call(client, "link_contacts", { contact_id: CONTACT, identifier: "ann@example.com" }),
  await call(client, "unlink_contact", { identifier: "ann@example.com" }),
  await call(client, "delete_message", { message_id: spare.structured?.id }),
  await call(client, "forget_contact", { contact_id: "spare" }),
];
// events: another connection writes; this one hears of its contact while subscribed, and not after
// (the 2026-07-28 era listens on a subscriptions/listen stream, closed to stop; the initialize era subscribes)
const subscribe = async (uri) => {
  if (!modern) return (await client.subscribeResource({ uri }), () => client.unsubscribeResource({ uri }));
  const subscription = await client.listen({ resourceSubscriptions: [uri] });
  return () => subscription.close();
};
const peer = await connected(config.peer, "ts-sdk-peer");
const stop = await subscribe(transcriptUri(CONTACT));
await call(peer.client, "append_message", { contact_id: CONTACT, channel: "sms", role: "user", content: "Thanks!" });
await waitFor(transcriptUri(CONTACT));
await stop();
const stopOther = await subscribe(transcriptUri(OTHER));
await call(peer.client, "append_message", { contact_id: CONTACT, channel: "sms", role: "user", content: "Bye" });
await call(peer.client, "append_message", { contact_id: OTHER, channel: "sms", role: "user", content: "Hello" });
await waitFor(transcriptUri(OTHER)); // the sentinel: the unsubscribed contact's write came before it
report.heard = heard;
await stopOther();

if (transport.terminateSession) {
  await peer.transport.terminateSession();
  await transport.terminateSession();
}
await peer.client.close();
await client.close();
process.stdout.write(JSON.stringify(report));
