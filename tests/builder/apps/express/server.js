const express = require("express");

const app = express();
app.get("/", (req, res) => res.send("Hello from Express on paas"));
app.listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
