// Fills "Live from the guest" with what the guest's CGI reports. The URL is relative, so it
// stays inside the preview. Sets data-live on <body> to "ok" or to what went wrong.
"use strict";
(async () => {
  const dl = document.getElementById("live");
  try {
    const r = await fetch("cgi-bin/status", { cache: "no-store" });
    if (!r.ok) throw new Error(`cgi-bin/status answered ${r.status}`);
    const info = await r.json();
    const rows = [
      ["hostname", info.hostname],
      ["kernel", info.kernel],
      ["uptime", `${info.uptime} s`],
      ["address", info.address],
      ["your address, as the guest sees it", info.client],
    ];
    dl.replaceChildren(
      ...rows.flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = String(v);
        dd.dataset.key = k;
        return [dt, dd];
      }),
    );
    document.body.dataset.live = "ok";
    document.body.dataset.hostname = info.hostname;
    document.body.dataset.client = info.client;
  } catch (err) {
    dl.replaceChildren(Object.assign(document.createElement("dd"), { textContent: String(err) }));
    document.body.dataset.live = String(err);
  }
})();
